"""`posisp compare` in seconds: every row is produced, nested MLflow runs, and the compute counters add up."""

from __future__ import annotations

import json

import pytest
import yaml
from conftest import REPO

from posisp_dist.cli import main
from posisp_dist.config import ConfigError
from posisp_dist.experiments.compare import METHODS, CompareConfig, load_compare, method_config
from posisp_dist.runs.tracking import Tracker

K = 3  # step-wise steps in the tiny comparison


def test_every_compare_config_loads_and_names_known_methods():
    for path in sorted((REPO / "configs").glob("compare*.yaml")):
        ccfg, base = load_compare(path)
        assert set(ccfg.methods) <= set(METHODS) and base.isp.modules


def test_cli_overrides_pick_the_other_budget_and_the_seeds():
    ccfg, _ = load_compare(REPO / "configs" / "compare.yaml", {"budget": "images", "seeds": [3]})
    assert ccfg.budget == "images" and ccfg.seeds == (3,) and ccfg.images >= 1
    with pytest.raises(ConfigError, match="budget"):
        load_compare(REPO / "configs" / "compare.yaml", {"budget": "flops"})


def test_broken_compare_configs_name_the_cause(tmp_path):
    bad = tmp_path / "c.yaml"
    bad.write_text("methods: [sequence_ppo, alphago]\n")
    with pytest.raises(ConfigError, match="alphago"):
        load_compare(bad)


def test_method_configs_apply_overrides_seed_and_budget(tiny_cfg):
    ccfg = CompareConfig(budget="images", images=100)
    cfg = method_config(tiny_cfg, "stepwise_ppo_adaptiveisp", 7, ccfg)
    assert cfg.env.kind == "stepwise" and cfg.env.all_modules_per_step and cfg.seed == 7
    assert cfg.train.image_budget == 100 and cfg.train.time_budget_s is None
    # val points at about the same training images: a step-wise iteration holds up to max_steps steps per image
    per_image = {m: method_config(tiny_cfg, m, 0, ccfg) for m in ("sequence_ppo", "stepwise_ppo")}
    batch = tiny_cfg.ppo.train_batch_size
    assert per_image["sequence_ppo"].train.val_every == max(1, round(ccfg.val_every_images / batch))
    steps = per_image["stepwise_ppo"].env.max_steps
    assert per_image["stepwise_ppo"].train.val_every == max(1, round(ccfg.val_every_images * steps / batch))
    blind = method_config(tiny_cfg, "sequence_ppo_blind", 0, CompareConfig(wall_clock_s=5))
    assert blind.policy.image_blind and blind.train.time_budget_s == 5


@pytest.mark.slow
def test_tiny_compare_produces_every_row_and_counts_compute(tiny_cfg, tiny_data, tiny_task, ray_local, tmp_path):
    raw = tiny_cfg.model_dump(mode="json")
    raw["env"].update(preview_size=16, num_envs_per_runner=16, max_steps=K, reuse_penalty=0.0)
    raw["ppo"].update(train_batch_size=48, minibatch_size=48, num_epochs=1)
    raw["train"].update(num_env_runners=0, out_dir=str(tmp_path / "runs"), grid_images=1)
    raw["tracking"]["uri"] = f"sqlite:///{tmp_path / 'mlflow.db'}"
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(raw))
    (tmp_path / "cmp.yaml").write_text(yaml.safe_dump({
        "base": str(tmp_path / "base.yaml"), "seeds": [0], "budget": "images", "images": 48, "split": "val",
        "latency_images": 4}))
    out = tmp_path / "cmp.json"
    assert main(["compare", "--config", str(tmp_path / "cmp.yaml"), "--out", str(tmp_path / "out"),
                 "--json", str(out), "--quiet"]) == 0
    payload = json.loads(out.read_text())
    rows = {r["method"]: r for r in payload["rows"]}
    assert set(rows) == set(METHODS) | {"random_search", "camera_isp", "input_raw"}
    for m in METHODS:  # the budget counts distinct training images
        assert rows[m]["distinct_images"] >= 48 and rows[m]["params"] > 0 and rows[m]["latency_ms"] > 0
        curve = rows[m]["curve"]  # val mAP at the budget's last iteration at least, with the compute spent by then
        assert curve and curve[-1]["images"] == rows[m]["images"] and curve[-1]["module_runs"] == rows[m]["module_runs"]
        assert curve[-1]["distinct_images"] == rows[m]["distinct_images"]
        k = METHODS[m].trains["env"].get("pipelines_per_image", 1)  # K pipelines per image: K episodes per image
        assert rows[m]["images"] == k * rows[m]["distinct_images"]
        if METHODS[m].trains["env"]["kind"] == "sequence":  # each pipeline is one task-model image, its own modules
            assert rows[m]["task_images"] == rows[m]["images"]
            assert rows[m]["module_runs"] <= tiny_cfg.isp.max_len * rows[m]["images"]
    reach = {(r["method"], r["target"], r["counter"]): r for r in payload["reach"]}
    assert set(reach) == {(m, t, c) for m in ("sequence_ppo", "sequence_ppo_terminal", "sequence_ppo_loo4")
                          for t in ("stepwise_ppo", "stepwise_ppo_adaptiveisp") for c in ("module_runs", "task_images")}
    for r in reach.values():
        (s,) = r["seeds"]
        best_seq = max(p["val"] for p in rows[r["method"]]["curve"])
        assert s["target_val"] == max(p["val"] for p in rows[r["target"]]["curve"])  # the target's kept checkpoint
        assert (s["ratio"] is None) == (best_seq < s["target_val"])  # "never reached" exactly when it was not
        if s["ratio"] is not None:
            assert 0 < s["spent"] <= rows[r["method"]][r["counter"]]
            assert s["ratio"] == pytest.approx(s["spent"] / rows[r["target"]][r["counter"]])
    # AdaptiveISP's profile runs every module at every step: M x (steps taken) module runs per image-step,
    # plus, with pathwise parameters, the kept module once more through its torch twin
    m = len(tiny_cfg.isp.modules)
    for suffix, per_step in (("_ppo_params", m), ("", m + 1)):
        adaptive, plain = rows[f"stepwise_ppo_adaptiveisp{suffix}"], rows[f"stepwise_ppo{suffix}"]
        assert adaptive["module_runs"] % per_step == 0 and adaptive["module_runs"] >= m * adaptive["images"] / 2
        assert adaptive["module_runs"] == per_step * adaptive["task_images"]  # one task call per module step
        assert plain["module_runs"] <= plain["task_images"] <= plain["images"] * K
    # pathwise rows backpropagate the task loss once per scored image; PPO-parameter rows never do
    for name in METHODS:
        backward = rows[name]["task_backward_images"]
        assert backward == (rows[name]["task_images"] if METHODS[name].param_learning == "pathwise" else 0)
    assert rows["input_raw"]["module_runs"] == 0 and rows["random_search"]["module_runs"] > 0
    assert (tmp_path / "out" / "compare.md").read_text().count("\n| ") == 1 + len(payload["aggregate"])  # + header
    assert (tmp_path / "out" / "compare.png").stat().st_size > 0
    tracker = Tracker(raw["tracking"]["uri"], "posisp")
    children = tracker.client.search_runs([tracker.experiment_id],
                                          f"tags.mlflow.parentRunId = '{payload['parent_run_id']}'")
    assert len(children) == len(METHODS)


def test_budgeted_runs_show_progress_in_the_budgets_unit(tiny_cfg):
    from posisp_dist.runs.storage import DriverState
    from posisp_dist.train.driver import _bar_position, _progress_bar

    class Bar:  # what the driver asks of tqdm
        def __init__(self, total, desc, disable, unit):
            self.total, self.unit, self.n = total, unit, 0

        def update(self, k):
            self.n += k

    state = DriverState(iteration=3, images=600, distinct_images=150, train_seconds=42.7)  # the budget counts distinct
    for ccfg, total, unit, at in [
        (CompareConfig(budget="images", images=100), 100, "img", 100),
        (CompareConfig(budget="wall_clock", wall_clock_s=60), 60, "s", 42),
    ]:
        cfg = method_config(tiny_cfg, "sequence_ppo", 0, ccfg)
        bar = _progress_bar(Bar, cfg, cfg.train.iterations, state, progress=False)
        assert (bar.total, bar.unit, bar.n, _bar_position(cfg, state)) == (total, unit, at, at)
    bar = _progress_bar(Bar, tiny_cfg, 7, state, progress=False)
    assert (bar.total, bar.unit, bar.n) == (7, "it", 3)


def test_compute_to_reach_reads_the_first_val_point_at_the_targets_best():
    from posisp_dist.experiments.compare import compute_to_reach

    def row(method, seed, vals, runs):
        curve = [{"val": v, "module_runs": r} for v, r in zip(vals, runs, strict=True)]
        return {"method": method, "seed": seed, "curve": curve, "module_runs": runs[-1]}

    rows = [
        row("stepwise_ppo", 0, [5.0, 9.0, 8.0], [100, 200, 400]),  # best 9.0; 400 module runs in all
        row("sequence_ppo", 0, [4.0, 9.5, 12.0], [20, 40, 60]),  # first at or above 9.0: 40 runs
        row("stepwise_ppo", 1, [5.0, 7.0], [100, 300]),
        row("sequence_ppo", 1, [4.0, 6.0], [20, 40]),  # never reaches 7.0
    ]
    out = compute_to_reach(rows, "sequence_ppo", "stepwise_ppo")
    (s0, s1) = out["seeds"]
    assert (s0["target_val"], s0["spent"], s0["target_spent"], s0["ratio"]) == (9.0, 40, 400.0, 0.1)
    assert s1["spent"] is None and s1["ratio"] is None and s1["target_val"] == 7.0
