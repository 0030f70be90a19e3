"""`posisp compare`: sequence-level PPO vs its image-blind variant vs step-wise PPO (AdaptiveISP-style) vs
random search vs the camera ISP vs input RAW, with equal budgets, over seeds, as nested MLflow runs."""

from __future__ import annotations

import shlex
import sys
import time
from itertools import accumulate
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, model_validator

from envs.factory import env_kind
from posisp_dist.config import Config, ConfigError, _Strict, load_config
from posisp_dist.experiments.results import aggregate, metric_columns, table, write_json
from posisp_dist.experiments.run import RunResult, run_method
from posisp_dist.methods import METHODS

FIXED = ("random_search", "camera_isp", "input_raw")


class CompareConfig(_Strict):
    """A comparison: a base experiment, the learned methods, seeds and one equal budget for all."""

    base: str = Field("configs/quick.yaml", description="experiment YAML every method starts from")
    methods: tuple[str, ...] = Field(tuple(METHODS), description=f"learned methods, from {tuple(METHODS)}")
    seeds: tuple[int, ...] = Field((0, 1), min_length=1)
    budget: Literal["wall_clock", "images"] = Field(
        "wall_clock", description="wall_clock (same training seconds) | images (same images)"
    )
    wall_clock_s: float = Field(300.0, gt=0, description="training seconds per method and seed")
    images: int = Field(16384, ge=1, description="training images (episodes) per method and seed")
    split: Literal["val", "test"] = Field("test", description="held-out split of the metric")
    latency_images: int = Field(64, ge=1, description="images timed for the policy's inference latency")
    val_every_images: int = Field(
        512, ge=1, description="score the greedy policy on val about every this many training images (the curve)"
    )

    @model_validator(mode="after")
    def _check(self) -> CompareConfig:
        unknown = set(self.methods) - set(METHODS)
        if unknown:
            raise ValueError(f"unknown methods {sorted(unknown)}; expected some of {tuple(METHODS)}")
        return self


def load_compare(path: str | Path, overrides: dict[str, Any] | None = None) -> tuple[CompareConfig, Config]:
    """The comparison config (with top-level `overrides`, e.g. {"budget": "images"}) and its base config."""
    try:
        raw = yaml.safe_load(Path(path).read_text()) or {}
        if not isinstance(raw, dict):
            raise ValueError(f"expected a mapping, got {type(raw).__name__}")
        ccfg = CompareConfig.model_validate({**raw, **(overrides or {})})
    except (OSError, ValueError, yaml.YAMLError, ValidationError) as e:
        raise ConfigError(f"compare config {path} is invalid: {e}") from None
    return ccfg, load_config(ccfg.base)


def method_config(base: Config, method: str, seed: int, ccfg: CompareConfig) -> Config:
    """The base config with a method's overrides, the seed and the budget applied."""
    raw = base.model_dump(mode="json")
    for section, fields in METHODS[method].overrides().items():
        raw[section].update(fields)
    raw["seed"] = seed
    if "train" in raw["task"]:  # each seed regenerates the data and retrains the task model (if trained here)
        raw["task"]["train"]["seed"] = seed
    budget = {"time_budget_s": ccfg.wall_clock_s, "image_budget": None}
    if ccfg.budget == "images":
        budget = {"time_budget_s": None, "image_budget": ccfg.images}
    cfg = Config.model_validate(raw)
    # val points at about the same training images for every method: a step-wise iteration holds
    # train_batch_size steps, up to max_steps per image, a sequence iteration one image per step
    per_iteration = cfg.ppo.train_batch_size / env_kind(cfg).steps_per_image(cfg)
    val_every = max(1, round(ccfg.val_every_images / per_iteration))
    raw["train"].update(iterations=10**6, val_every=val_every, **budget)
    return Config.model_validate(raw)


def policy_latency_ms(cfg: Config, checkpoint: str, n: int) -> tuple[float, int]:
    """(ms per image of greedy policy inference on `n` val images, policy parameter count)."""
    from envs.factory import CoreSource
    from posisp_dist.trained.inference import load_policy, policy_pipelines, stepwise_steps

    core = CoreSource(cfg, "val").get()
    module = load_policy(checkpoint)
    images = core.images[:n]
    policy_pipelines(module, images[:2], core.executor, core.preview_size, stepwise_steps(cfg))  # warm-up
    t0 = time.perf_counter()
    policy_pipelines(module, images, core.executor, core.preview_size, stepwise_steps(cfg))
    ms = 1000.0 * (time.perf_counter() - t0) / len(images)
    return ms, sum(p.numel() for p in module.parameters())


def learned_row(
    ccfg: CompareConfig, base: Config, method: str, seed: int, parent: str, progress: bool, baselines: bool
) -> tuple[dict[str, Any], RunResult]:
    """-> (a method's row for one seed: `RunResult.row` plus its policy's latency and size, its `RunResult`)."""
    cfg = method_config(base, method, seed, ccfg)
    result = run_method(cfg, ccfg.split, parent_run_id=parent, progress=progress, baselines=baselines)
    ms, n_params = policy_latency_ms(cfg, result.checkpoint, ccfg.latency_images)
    return {**result.row(method, seed), "latency_ms": ms, "params": n_params}, result


def compute_to_reach(rows: list[dict], method: str, target: str, counter: str = "module_runs") -> dict[str, Any]:
    """Per seed: the `counter` `method` had spent when its val metric first reached `target`'s best val value
    (its kept checkpoint), and what `target` spent in all; their ratio answers "the same metric with a fifth
    of the compute?". Higher is better (the built-in tasks' primary metrics)."""
    out = []
    for seed in sorted({r["seed"] for r in rows if r["method"] == target}):
        mine = [r for r in rows if r["seed"] == seed and r["method"] in (method, target)]
        by = {r["method"]: r for r in mine}
        if method not in by or not by[target].get("curve") or not by[method].get("curve"):
            continue
        goal = max(p["val"] for p in by[target]["curve"])  # the target's kept (best) checkpoint
        spent = next((p[counter] for p in by[method]["curve"] if p["val"] >= goal), None)
        total = float(by[target][counter])
        out.append({"seed": seed, "target_val": goal, "spent": spent, "target_spent": total,
                    "ratio": None if spent is None or not total else spent / total})
    return {"method": method, "target": target, "counter": counter, "seeds": out}


def fixed_rows(payload_rows: list[dict], seed: int, metrics: list[str]) -> list[dict]:
    """Random search, camera ISP and input RAW, with the compute each spent (random search's: its search on val
    images, as counted by the baselines' table; the references: none)."""
    return [
        {"method": r["method"], "seed": seed, **{k: r[k] for k in metrics},
         "module_runs": r.get("module_runs", 0), "task_images": r.get("task_images", 0)}
        for r in payload_rows if r["method"] in FIXED
    ]


COUNTERS = ("distinct_images", "module_runs", "task_images", "task_backward_images", "train_seconds", "latency_ms",
            "params")
COUNTER_COLUMNS = [("training images", "distinct_images", ".0f"), ("ISP module runs", "module_runs", ".0f"),
                   ("task-model fwd images", "task_images", ".0f"),
                   ("task-model bwd images", "task_backward_images", ".0f"), ("train s", "train_seconds", ".0f"),
                   ("latency ms/img", "latency_ms", ".2f"), ("params", "params", ".0f")]


def budget_text(ccfg: CompareConfig) -> str:
    return f"{ccfg.wall_clock_s:g} s of training" if ccfg.budget == "wall_clock" else f"{ccfg.images} training images"


def markdown(agg: list[dict], ccfg: CompareConfig, metrics: list[dict]) -> str:
    head = (f"Budget per method and seed: {budget_text(ccfg)}; seeds {list(ccfg.seeds)} (each regenerates the data "
            f"and the task model); split `{ccfg.split}`; mean ± std over seeds.")
    return head + "\n\n" + table(agg, [*metric_columns(metrics), *COUNTER_COLUMNS])


def reach_markdown(reach: list[dict]) -> str:
    """One line per (method, target, counter): the compute ratio per seed."""
    lines = []
    for r in reach:
        per = ", ".join(
            f"seed {s['seed']}: " + ("never reached" if s["ratio"] is None else f"{s['ratio']:.3f}") for s in r["seeds"]
        )
        lines.append(f"- {r['method']} reaches {r['target']}'s best val mAP with this fraction of its "
                     f"{r['counter']}: {per or 'no data'}")
    return "\n".join(lines)


def metric_vs_compute_png(agg: list[dict], rows: list[dict], path: Path, primary: dict) -> Path:
    """Left: the primary test metric against ISP module runs during training (log x), one marker per method. Middle
    and right: each learned method's val curve of it (one line per seed) against training images and against
    ISP module runs."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import NullFormatter

    fig = Figure(figsize=(16, 4.6), layout="constrained")
    ax, by_images, by_runs = fig.subplots(1, 3)
    colours = {m: f"C{i}" for i, m in enumerate(a["method"] for a in agg)}
    for a in agg:
        x = max(a.get("module_runs", 0.0), 1.0)
        key = primary["key"]
        ax.errorbar(x, a[key], yerr=a.get(f"{key}_std", 0.0), fmt="o", capsize=3, label=a["method"],
                    color=colours[a["method"]])
    ax.set_xscale("log")
    ax.set_xlabel("ISP module runs during training (1 = none)")
    ax.set_ylabel(f"held-out {primary['label']}")
    ax.legend(fontsize=7)
    for r in rows:
        if not r.get("curve"):
            continue
        label = r["method"] if r["seed"] == min(q["seed"] for q in rows if q["method"] == r["method"]) else None
        ys = [p["val"] for p in r["curve"]]
        best = list(accumulate(ys, max if primary.get("higher_is_better", True) else min))
        for axis, key in ((by_images, "distinct_images"), (by_runs, "module_runs")):
            xs = [p[key] for p in r["curve"]]
            axis.plot(xs, ys, marker=".", linewidth=0.6, color=colours[r["method"]], alpha=0.25)
            axis.step(xs, best, where="post", linewidth=1.6, color=colours[r["method"]], label=label)
    by_images.set_xlabel("distinct training images")
    by_runs.set_xlabel("ISP module runs during training")
    by_runs.set_xscale("log")
    by_runs.xaxis.set_minor_formatter(NullFormatter())  # log-axis minor labels overlap
    for axis in (by_images, by_runs):
        axis.set_ylabel(f"val {primary['label']}: best so far (bold; kept by selection), each point (faint)")
        axis.legend(fontsize=7)
    for axis in (ax, by_images, by_runs):
        axis.grid(alpha=0.3)
    FigureCanvasAgg(fig).print_png(str(path))
    return path


REACH = tuple((m, t) for m in ("sequence_ppo", "sequence_ppo_terminal", "sequence_ppo_loo4")
              for t in ("stepwise_ppo_adaptiveisp", "stepwise_ppo"))


def summarise(ccfg: CompareConfig, rows: list[dict], parent: str | None, metrics: list[dict]) -> dict[str, Any]:
    """Aggregate, table and the compute-to-reach figures of the rows so far (`metrics`: the task's, primary
    first, as in an eval payload)."""
    agg = aggregate(rows, [*(m["key"] for m in metrics), *COUNTERS])
    methods = {r["method"] for r in rows}
    reach = [compute_to_reach(rows, m, t, c) for m, t in REACH if {m, t} <= methods
             for c in ("module_runs", "task_images")]
    return {"command": shlex.join(["posisp", *sys.argv[1:]]), "config": ccfg.model_dump(mode="json"),
            "budget": budget_text(ccfg), "metrics": metrics, "rows": rows, "aggregate": agg, "reach": reach,
            "table": markdown(agg, ccfg, metrics), "reach_table": reach_markdown(reach), "parent_run_id": parent}


def run_compare(
    ccfg: CompareConfig, base: Config, out_dir: str | Path, progress: bool = True, out_json: str | Path | None = None
) -> dict[str, Any]:
    """Train and evaluate every method for every seed (nested under one parent MLflow run). With `out_json`
    the payload is rewritten after every trained row, so a stopped comparison keeps what it finished."""
    from posisp_dist.runs.storage import open_tracker, resolve_paths
    from posisp_dist.tasks import task_metrics

    base = resolve_paths(base)
    metrics = [m.to_json() for m in task_metrics(base.task)]
    keys = [m["key"] for m in metrics]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tracker = open_tracker(base)
    tracker.start(run_name="compare", tags={"posisp.method": "compare"})
    with tracker:
        tracker.log_dict(ccfg.model_dump(mode="json"), "compare.json")
        rows: list[dict] = []
        for seed in ccfg.seeds:
            for method in ccfg.methods:
                first = method == ccfg.methods[0]  # the fixed rows: evaluated once per seed
                row, result = learned_row(ccfg, base, method, seed, str(tracker.run_id), progress, baselines=first)
                if first:
                    rows += fixed_rows(result.baselines, seed, keys)
                rows.append(row)
                if out_json:
                    write_json(out_json, summarise(ccfg, rows, str(tracker.run_id), metrics))
        payload = summarise(ccfg, rows, str(tracker.run_id), metrics)
        (out / "compare.md").write_text(payload["table"] + "\n\n" + payload["reach_table"] + "\n")
        tracker.log_artifact(out / "compare.md")
        tracker.log_artifact(metric_vs_compute_png(payload["aggregate"], rows, out / "compare.png", metrics[0]))
        tracker.log_dict(payload, "compare_rows.json")
    return payload
