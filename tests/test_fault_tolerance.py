"""Faults during training: an EnvRunner process killed mid-run is restarted and the run goes on, with the restart
logged to MLflow; a driver killed with SIGKILL is resumed with `posisp train --resume` into the same run with
every iteration logged exactly once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from posisp_dist.cli import main
from posisp_dist.config import Config
from posisp_dist.runs.tracking import Tracker

BATCH = 64


def small_raw(tiny_cfg: Config, tmp: Path, iterations: int, runners: int) -> dict:
    raw = tiny_cfg.model_dump(mode="json")
    raw["env"].update(preview_size=16, num_envs_per_runner=16)
    raw["ppo"].update(train_batch_size=BATCH, minibatch_size=32, num_epochs=1)
    raw["train"].update(
        iterations=iterations, num_env_runners=runners, checkpoint_every=2, grid_images=2, out_dir=str(tmp / "runs")
    )
    raw["tracking"]["uri"] = f"sqlite:///{tmp / 'mlflow.db'}"
    return raw


def read_events(tracker: Tracker, run_id: str, tmp: Path) -> list[dict]:
    path = tracker.download_artifacts("events.jsonl", tmp / "events", run_id)
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


@pytest.mark.slow
def test_a_killed_env_runner_is_restarted_and_the_restart_is_logged(
    tiny_cfg, tiny_data, tiny_task, ray_local, tmp_path
):
    from posisp_dist.train.driver import train
    from posisp_dist.train.runners import describe_env_runners

    iterations = 4
    cfg = Config.model_validate(small_raw(tiny_cfg, tmp_path, iterations, runners=2))
    killed: dict[str, int] = {}

    def kill_runner_after_first_iteration(algo, state):
        if state.iteration == 1:
            victim = describe_env_runners(algo)[0]
            os.kill(victim["pid"], signal.SIGKILL)  # a crash: no cleanup, Ray sees the process die
            killed.update(worker=victim["worker_index"], pid=victim["pid"])
            # Ray restarts the actor (tens of seconds, minutes on a busy 2-core box); wait for it so that the next
            # iterations see it back, instead of betting on how many iterations a restart takes
            deadline = time.time() + 300  # seen over 75 s on a 2-core box also running a training
            while time.time() < deadline and not _new_pid(algo, victim["worker_index"], victim["pid"]):
                time.sleep(1)

    summary = train(cfg, progress=False, on_iteration=kill_runner_after_first_iteration)
    tracker = Tracker(str(cfg.tracking.uri), cfg.tracking.experiment)
    run = tracker.get_run(summary["run_id"])
    assert killed and summary["iterations"] == iterations and run.info.status == "FINISHED"
    assert [int(v) for _, v in tracker.history("charts/iteration", run.info.run_id)] == list(range(1, iterations + 1))
    restarts = [v for _, v in tracker.history("charts/env_runner_restarts", run.info.run_id)]
    assert restarts[0] == 0 and restarts[-1] == 1  # one kill, one restart, counted once
    assert run.data.tags["posisp.env_runner_restarts"] == "1"
    events = [e for e in read_events(tracker, run.info.run_id, tmp_path) if e["event"] == "env_runner_restarted"]
    assert len(events) == 1 and events[0]["worker_index"] == killed["worker"] and events[0]["iteration"] >= 2
    placement = json.loads(
        Path(tracker.download_artifacts("env_runners.json", tmp_path / "dl", run.info.run_id)).read_text()
    )
    restarted = next(r for r in placement if r["worker_index"] == killed["worker"])
    assert restarted["pid"] != killed["pid"] and restarted["image_ids"]  # a new process, data loaded again


def _new_pid(algo, worker: int, old_pid: int) -> bool:
    """Whether EnvRunner `worker` answers from a process other than `old_pid` (errors while restarting: no)."""
    pids = algo.env_runner_group.foreach_env_runner(
        lambda r: os.getpid(), remote_worker_ids=[worker], healthy_only=False, local_env_runner=False
    )
    return bool(pids) and pids[0] != old_pid


def _children_of_tmpdir(tmp: str) -> list[int]:
    """Pids of processes (Ray's, of the killed driver) whose command line names our private Ray temp dir."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if tmp.encode() in (entry / "cmdline").read_bytes():
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


def _kill_session(pid: int) -> None:
    """SIGKILL the process group of a driver we started in its own session (its raylet, GCS and workers)."""
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


@pytest.fixture
def driver_process(tmp_path):
    """Start `posisp train` in its own session and private Ray temp dir; clean up whatever it leaves."""
    ray_tmp = tempfile.mkdtemp(prefix="pxk", dir="/tmp")
    procs: list[subprocess.Popen] = []

    def start(config: Path) -> subprocess.Popen:
        env = {**os.environ, "RAY_TMPDIR": ray_tmp}  # its own `ray.init()` joins no other cluster
        env.pop("RAY_ADDRESS", None)
        cmd = [sys.executable, "-m", "posisp_dist.cli", "train", "--config", str(config), "--quiet"]
        log = open(tmp_path / "driver.log", "wb")  # noqa: SIM115 (closed with the process)
        procs.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True))
        return procs[-1]

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        _kill_session(proc.pid)
    for pid in _children_of_tmpdir(ray_tmp):  # the killed driver's raylet, GCS and workers
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    import shutil

    shutil.rmtree(ray_tmp, ignore_errors=True)


def _wait_for_iterations(tracker: Tracker, proc: subprocess.Popen, log: Path, n: int, timeout: float) -> str:
    """Run id once `n` iterations are checkpointed and logged (the driver checkpoints before it logs)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, f"the driver exited before it could be killed:\n{log.read_text()[-3000:]}"
        runs = tracker.client.search_runs([tracker.experiment_id])
        if runs and len(tracker.history("charts/iteration", runs[0].info.run_id)) >= n:
            return runs[0].info.run_id
        time.sleep(0.5)
    raise TimeoutError(f"no {n} iterations logged within {timeout} s")


@pytest.mark.slow
def test_a_sigkilled_driver_resumes_into_the_same_run_with_each_iteration_once(
    tiny_cfg, tiny_data, tiny_task, ray_local, tmp_path, driver_process
):
    iterations = 8
    raw = small_raw(tiny_cfg, tmp_path, iterations, runners=1)
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(raw))
    uri = raw["tracking"]["uri"]
    tracker = Tracker(uri, "posisp")
    proc = driver_process(path)
    run_id = _wait_for_iterations(tracker, proc, tmp_path / "driver.log", 2, timeout=75)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=10) == -signal.SIGKILL
    _kill_session(proc.pid)  # and the local Ray it started, so that it frees the CPUs
    done_before = len(tracker.history("charts/iteration", run_id))
    assert 2 <= done_before < iterations  # really killed mid-run
    assert tracker.get_run(run_id).info.status == "RUNNING"  # a SIGKILL leaves no chance to end the run

    assert (
        main(["train", "--resume", run_id, "--tracking-uri", uri, "--quiet", "--json", str(tmp_path / "resumed.json")])
        == 0
    )
    resumed = json.loads((tmp_path / "resumed.json").read_text())
    history = tracker.history("charts/iteration", run_id)
    assert [int(v) for _, v in history] == list(range(1, iterations + 1))  # none lost, none twice
    assert [s for s, _ in history] == [BATCH * i for i in range(1, iterations + 1)]  # step = env steps
    assert resumed["run_id"] == run_id and resumed["iterations"] == iterations
    assert resumed["env_steps"] == BATCH * iterations
    assert tracker.get_run(run_id).info.status == "FINISHED"
    resumes = [e for e in read_events(tracker, run_id, tmp_path) if e["event"] == "resumed"]
    assert len(resumes) == 1 and resumes[0]["iteration"] in (done_before, done_before + 1)  # its last checkpoint
