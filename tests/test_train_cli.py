"""`posisp train | eval | apply` end to end on the tiny config: MLflow params, tags, metrics and artifacts,
exactly-once resume into the same run, eval rows, processed PNGs, and failed runs marked FAILED."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import with_task
from dng_writer import write_dng

from posisp_dist.cli import main
from posisp_dist.config import flatten
from posisp_dist.runs.tracking import Tracker

ITERS, BATCH = 3, 64


def write_config(tiny_cfg, tmp: Path, **sections) -> tuple[Path, str]:
    raw = tiny_cfg.model_dump(mode="json")
    raw["env"].update(preview_size=16, num_envs_per_runner=16)
    raw["ppo"].update(train_batch_size=BATCH, minibatch_size=32, num_epochs=1)
    raw["train"].update(iterations=ITERS, num_env_runners=1, checkpoint_every=2, grid_images=2, val_every=1,
                        out_dir=str(tmp / "runs"))
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    raw["tracking"]["uri"] = uri
    for section, values in sections.items():
        raw[section] = with_task(raw[section], values) if section == "task" else {**raw[section], **values}
    path = tmp / "cfg.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path, uri


@pytest.fixture(scope="module")
def trained(tiny_cfg, tiny_data, tiny_task, ray_local, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("train")
    path, uri = write_config(tiny_cfg, tmp)
    assert main(["train", "--config", str(path), "--json", str(tmp / "summary.json"), "--quiet"]) == 0
    summary = json.loads((tmp / "summary.json").read_text())
    return {"tmp": tmp, "uri": uri, "summary": summary, "run_id": summary["run_id"], "tracker": Tracker(uri, "posisp")}


def artifact_paths(tracker: Tracker, run_id: str, path: str | None = None) -> set[str]:
    return {a.path for a in tracker.client.list_artifacts(run_id, path)}


@pytest.mark.slow
def test_train_logs_params_tags_metrics_and_artifacts(trained, tiny_cfg):
    tracker, run_id = trained["tracker"], trained["run_id"]
    run = tracker.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert set(run.data.params) == set(flatten(tiny_cfg))
    assert run.data.params["ppo.train_batch_size"] == str(BATCH)
    assert {"git_sha", "ray_version", "torch_version", "array_backend", "device"} <= set(run.data.tags)
    steps = [s for s, _ in tracker.history("charts/iteration", run_id)]
    assert steps == [BATCH * i for i in range(1, ITERS + 1)]  # step = env steps
    for key in ("charts/episode_reward_mean", "charts/env_steps_per_s", "losses/entropy", "losses/kl",
                "isp/task_score", "isp/length", "isp/cost", "isp/module_runs", "isp/task_calls"):
        assert len(tracker.history(key, run_id)) == ITERS, key
    calls = tracker.history("isp/task_calls", run_id)
    assert all(v == BATCH / 16 for _, v in calls)  # one task-model batch per vector step of 16 envs
    top = artifact_paths(tracker, run_id)
    assert {"config.json", "best_pipelines.json", "learning_curve.png", "isp_grid.png", "summary.json"} <= top
    uploaded = {"checkpoints/iter_000002", "checkpoints/iter_000003", "checkpoints/best"}  # every 2nd, last, best
    assert artifact_paths(tracker, run_id, "checkpoints") == uploaded
    best_path = tracker.download_artifacts("best_pipelines.json", trained["tmp"] / "dl", run_id)
    best = json.loads(Path(best_path).read_text())
    assert len(best["per_image"]) == tiny_cfg.data.n_val and "sequences" in best


def test_the_checkpoint_with_the_best_val_map_is_kept_and_used_for_eval(trained):
    from posisp_dist.runs.storage import BEST_CKPT_TAG, fetch_run, read_state

    tracker, run_id, summary = trained["tracker"], trained["run_id"], trained["summary"]
    history = [m.value for m in tracker.client.get_metric_history(run_id, "eval/val_map_selection")]
    assert len(history) == ITERS  # val_every=1
    best_iteration = int(np.argmax(history)) + 1  # the first of equal scores is kept
    assert summary["best_val_iteration"] == best_iteration
    assert Path(summary["checkpoint"]).name == "best"
    assert read_state(Path(summary["checkpoint"])).iteration == best_iteration
    assert tracker.get_run(run_id).data.tags[BEST_CKPT_TAG] == "checkpoints/best"
    assert "checkpoints/best" in artifact_paths(tracker, run_id, "checkpoints")
    assert fetch_run(run_id, trained["uri"])[1] == Path(summary["checkpoint"])
    shutil.rmtree(summary["checkpoint"])  # as on another machine: eval fetches the best from the run
    assert read_state(fetch_run(run_id, trained["uri"])[1]).iteration == best_iteration


def test_a_second_driver_is_refused_while_another_holds_the_run_then_takes_over_after_a_crash(trained, capsys):
    """A live driver (here a process holding the run's lease) makes `--resume` refuse by name, touching nothing;
    once that process dies by SIGKILL the lease is free again (the next test resumes the run)."""
    import subprocess
    import sys

    tracker, run_id = trained["tracker"], trained["run_id"]
    run_dir = trained["tmp"] / "runs" / run_id
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time\nfrom posisp_dist.runs.lease import run_lease\n"
        f"with run_lease({str(run_dir)!r}, {run_id!r}):\n    print('held', flush=True)\n    time.sleep(600)\n")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"  # blocks until the lease is taken (or the child died)
        history = tracker.history("charts/iteration", run_id)
        capsys.readouterr()
        assert main(["train", "--resume", run_id, "--iterations", str(ITERS + 2), "--tracking-uri", trained["uri"],
                     "--quiet"]) == 2
        err = capsys.readouterr().err
        assert f"run {run_id} is being trained by another driver (pid {holder.pid} on" in err
        assert len(err.strip().splitlines()) == 1
        assert tracker.get_run(run_id).info.status == "FINISHED"
        assert tracker.history("charts/iteration", run_id) == history  # nothing logged by the refused driver
    finally:
        holder.kill()  # SIGKILL: no cleanup ran, the OS released the lock
        holder.wait(timeout=60)
    from posisp_dist.runs.lease import run_lease

    with run_lease(run_dir, run_id):  # the dead holder's lock went with its process: the run is takeable
        pass


@pytest.mark.slow
def test_resume_continues_the_same_run_without_losing_or_repeating_iterations(trained):
    tracker, run_id = trained["tracker"], trained["run_id"]
    code = main(["train", "--resume", run_id, "--iterations", str(ITERS + 2), "--tracking-uri", trained["uri"],
                 "--quiet", "--json", str(trained["tmp"] / "resumed.json")])
    assert code == 0
    resumed = json.loads((trained["tmp"] / "resumed.json").read_text())
    assert resumed["run_id"] == run_id and resumed["iterations"] == ITERS + 2
    iters = [int(v) for _, v in tracker.history("charts/iteration", run_id)]
    assert iters == list(range(1, ITERS + 3))  # each iteration logged exactly once
    assert resumed["env_steps"] == BATCH * (ITERS + 2)
    assert tracker.get_run(run_id).info.status == "FINISHED"


def test_eval_writes_baseline_rows_and_the_learned_policy(trained, tiny_cfg):
    out = trained["tmp"] / "eval.json"
    assert main(["eval", "--run", trained["run_id"], "--split", "test", "--tracking-uri", trained["uri"],
                 "--json", str(out), "--quiet"]) == 0
    rows = {r["method"]: r for r in json.loads(out.read_text())["rows"]}
    assert set(rows) == {"clean_srgb", "input_raw", "camera_isp", "random_search", "sequence_ppo"}
    learned = rows["sequence_ppo"]
    assert 0.0 <= learned["map"] <= 100.0 and len(learned["pipelines"]) == tiny_cfg.data.n_test
    assert all(set(p) >= {"image_id", "modules", "params"} for p in learned["pipelines"])


def test_apply_writes_pngs_and_pipelines_for_dng_and_npz(trained, tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    bayer = rng.integers(64, 1023, (32, 48)).astype(np.uint16)
    dng = write_dng(tmp_path / "shot.dng", bayer, 64, 1023, "BGGR")
    npz = tmp_path / "mosaic.npz"
    np.savez(npz, bayer=bayer, black_level=64, white_level=1023, cfa="RGGB")
    out = tmp_path / "out"
    assert main(["apply", "--run", trained["run_id"], str(dng), str(npz), "-o", str(out),
                 "--tracking-uri", trained["uri"]]) == 0
    for stem in ("shot", "mosaic"):
        assert Image.open(out / f"{stem}.png").size == (48, 32)
        assert "modules" in json.loads((out / f"{stem}.json").read_text())
    bad = tmp_path / "bad.npz"
    np.savez(bad, bayer=bayer[:, :47], black_level=64, white_level=1023)
    # a bad input is reported and makes the exit status 1; the batch itself ran
    assert main(["apply", "--run", trained["run_id"], str(bad), "-o", str(out), "--tracking-uri", trained["uri"]]) == 1


def test_a_failing_run_is_marked_failed_with_its_error(tiny_cfg, tiny_data, ray_local, tmp_path):
    missing = str(tmp_path / "no_such_weights.pt")
    path, uri = write_config(tiny_cfg, tmp_path, task={"kind": "torchvision", "weights": missing})
    assert main(["train", "--config", str(path), "--quiet"]) == 2
    tracker = Tracker(uri, "posisp")
    runs = tracker.client.search_runs([tracker.experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FAILED"
    assert "error" in runs[0].data.tags and "error.txt" in artifact_paths(tracker, runs[0].info.run_id)


def test_unknown_run_ids_and_missing_arguments_are_clear_errors(trained, capsys):
    assert main(["eval", "--run", "0" * 32, "--tracking-uri", trained["uri"]]) == 2
    assert "0" * 32 in capsys.readouterr().err
    assert main(["train"]) == 2


@pytest.mark.slow
def test_stepwise_ppo_trains_and_evaluates_through_the_same_stack(tiny_cfg, tiny_data, tiny_task, ray_local, tmp_path):
    """Step-wise PPO with pathwise parameters (quick.yaml's learner): each step's module through its twin."""
    path, uri = write_config(tiny_cfg, tmp_path, env={"preview_size": 16, "num_envs_per_runner": 16,
                                                      "kind": "stepwise", "max_steps": 3},
                             policy={"param_learning": "pathwise"})
    out = tmp_path / "sw.json"
    assert main(["train", "--config", str(path), "--iterations", "2", "--eval", "val", "--quiet",
                 "--json", str(out)]) == 0
    summary = json.loads(out.read_text())
    rows = {r["method"]: r for r in summary["eval"]["rows"]}
    assert "stepwise_ppo" in rows and all(len(p["modules"]) <= 3 for p in rows["stepwise_ppo"]["pipelines"])
    tracker = Tracker(uri, "posisp")
    run = tracker.get_run(summary["run_id"])
    assert run.data.tags["posisp.method"] == "stepwise_ppo"
    lengths = [v for _, v in tracker.history("isp/task_calls", summary["run_id"])]
    assert all(v >= BATCH / 16 for v in lengths)  # one task batch per vector step, several steps per episode
    assert summary["task_backward_images"] == summary["task_images"] > 0  # every scored step backpropagated


@pytest.mark.slow
def test_eval_refuses_data_the_run_never_saw_and_rebuilds_it_on_request(tiny_cfg, tiny_data, ray_local, tmp_path,
                                                                        capsys):
    """As after `posisp seeds`: the run's data.root is rebuilt with another seed. `posisp eval` of the run refuses
    by name; with --rebuild-data it regenerates the run's own data and reports on it."""
    import shutil

    from posisp_dist.config import Config
    from posisp_dist.data.build import build_dataset

    root = tmp_path / "data"
    shutil.copytree(tiny_data, root)
    path, uri = write_config(tiny_cfg, tmp_path, data={"root": str(root)})
    assert main(["train", "--config", str(path), "--json", str(tmp_path / "s.json"), "--quiet"]) == 0
    run_id = json.loads((tmp_path / "s.json").read_text())["run_id"]
    tags = Tracker(uri, "posisp").get_run(run_id).data.tags
    assert tags["posisp.data_fingerprint"] == json.loads((root / "manifest.json").read_text())["fingerprint"]
    assert tags["posisp.task_fingerprint"] not in ("", "None")
    args = ["eval", "--run", run_id, "--split", "val", "--tracking-uri", uri, "--quiet"]
    assert main([*args, "--json", str(tmp_path / "before.json")]) == 0
    other = Config.model_validate({**yaml.safe_load(path.read_text()), "seed": 1}).data
    build_dataset(other, seed=1, progress=False)  # what `posisp seeds` leaves behind
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err
    assert f"run {run_id} trained on data {tags['posisp.data_fingerprint']}" in err and "--rebuild-data" in err
    assert len(err.strip().splitlines()) == 1
    assert main(["train", "--resume", run_id, "--iterations", str(ITERS + 1), "--tracking-uri", uri, "--quiet"]) == 2
    assert "trained on data" in capsys.readouterr().err  # nor is a resume trained on other data,
    assert Tracker(uri, "posisp").get_run(run_id).info.status == "FINISHED"  # and the refusal touched nothing
    assert main([*args, "--rebuild-data", "--json", str(tmp_path / "after.json")]) == 0
    before, after = (json.loads((tmp_path / f"{n}.json").read_text())["rows"] for n in ("before", "after"))
    assert [r["map"] for r in after] == [r["map"] for r in before]


@pytest.mark.slow
def test_resuming_without_local_checkpoints_reports_the_kept_best(tiny_cfg, tiny_data, ray_local, tmp_path):
    """Local checkpoints deleted (another machine, a cleaned disk): the resumed run's summary names the best-on-val
    checkpoint it fetched back from the run, the one `best_val_iteration` says it kept."""
    from posisp_dist.runs.storage import read_state

    path, uri = write_config(tiny_cfg, tmp_path)
    assert main(["train", "--config", str(path), "--json", str(tmp_path / "a.json"), "--quiet"]) == 0
    first = json.loads((tmp_path / "a.json").read_text())
    shutil.rmtree(tmp_path / "runs" / first["run_id"] / "checkpoints")
    assert main(["train", "--resume", first["run_id"], "--iterations", str(ITERS), "--tracking-uri", uri, "--quiet",
                 "--json", str(tmp_path / "b.json")]) == 0
    again = json.loads((tmp_path / "b.json").read_text())
    assert again["best_val_iteration"] == first["best_val_iteration"]
    assert read_state(Path(again["checkpoint"])).iteration == again["best_val_iteration"]


def test_eval_on_a_read_only_store_prints_its_table_and_warns_once(trained, capsys, monkeypatch):
    """(As root nothing is read-only: the store's own check is made to report it.)"""
    from posisp_dist.runs import tracking

    monkeypatch.setattr(tracking, "_check_sqlite_store", lambda db, uri: f"MLflow store {uri} is read-only (test)")
    capsys.readouterr()
    assert main(["eval", "--run", trained["run_id"], "--split", "val", "--tracking-uri", trained["uri"],
                 "--quiet"]) == 0
    out = capsys.readouterr()
    assert "sequence_ppo" in out.out and "camera_isp" in out.out  # the table is printed
    err = out.err.strip().splitlines()
    assert len(err) == 1 and "were not logged" in err[0] and "read-only (test)" in err[0]
