"""Every way a training ends leaves its MLflow run terminal with the reason recorded: a corrupt shard, found by the
driver or read in a remote EnvRunner, fails the run naming the file (checkpoints kept), SIGTERM and SIGINT end it
KILLED with one line on the console and no traceback."""

from __future__ import annotations

import os
import shutil
import signal
import time
from pathlib import Path

import pytest
import yaml
from test_fault_tolerance import _kill_session, _wait_for_iterations, driver_process, small_raw  # noqa: F401

from posisp_dist.config import Config
from posisp_dist.data.shards import DataError, RawDataset
from posisp_dist.runs.signals import Interrupted, signals_end_the_run, uninterrupted
from posisp_dist.runs.tracking import END_REASON_TAG, Tracker
from posisp_dist.train.endings import data_error_of


def _assert_failed_naming(tracker: Tracker, run_id: str, victim: Path, ckpt: Path) -> None:
    """The run is FAILED with the file in its reason, no iteration on part of the data was logged, and the
    checkpoint of the good iteration is still there to resume from."""
    run = tracker.get_run(run_id)
    assert run.info.status == "FAILED"
    assert str(victim) in run.data.tags["error"] and str(victim) in run.data.tags[END_REASON_TAG]
    assert [int(v) for _, v in tracker.history("charts/iteration", run_id)] == [1]  # no half-data iteration
    assert ckpt.is_dir() and any(ckpt.iterdir())
    assert f"checkpoints/{ckpt.name}" in {a.path for a in tracker.client.list_artifacts(run_id, "checkpoints")}


@pytest.mark.slow
def test_a_corrupt_shard_fails_the_run_naming_the_file_on_the_driver_or_in_its_env_runner_and_keeps_checkpoints(
    tiny_cfg, tiny_data, tiny_task, ray_local, tmp_path, monkeypatch
):
    """The driver reads every shard before Ray starts: the bad file is named in one line, with no EnvRunner
    traceback or Ray error blocks before it. Where the driver's check passed (a node with another copy of the
    data, a file changed since), the EnvRunner that reads it posts the error through the run's mailbox and ends:
    the run fails naming the file, before the iteration trained on the other runners' shards is kept."""
    from posisp_dist.train.driver import train

    root = tmp_path / "data"
    shutil.copytree(tiny_data, root)
    raw = small_raw(tiny_cfg, tmp_path, iterations=1, runners=2)
    raw["data"]["root"] = str(root)
    cfg = Config.model_validate(raw)
    first = train(cfg, progress=False)  # one good iteration: a checkpoint to keep
    ckpt = Path(first["checkpoint"])
    assert ckpt.is_dir()
    tracker = Tracker(str(cfg.tracking.uri), cfg.tracking.experiment)

    victim = Path(RawDataset(root, "train").shard_paths[1])  # read by EnvRunner 2 only (shards 1, 3)
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 3])  # truncated, as by a full disk
    with pytest.raises(DataError, match=victim.name) as on_driver:
        train(resume_run_id=first["run_id"], tracking_uri=cfg.tracking.uri, iterations=3, progress=False)
    assert "EnvRunner" not in str(on_driver.value)  # the driver's own check, before any EnvRunner ran
    _assert_failed_naming(tracker, first["run_id"], victim, ckpt)

    monkeypatch.setattr(RawDataset, "check", lambda self: 0)  # the driver's copy passes (EnvRunners: own process)
    with pytest.raises(DataError, match=victim.name) as in_runner:
        train(resume_run_id=first["run_id"], tracking_uri=cfg.tracking.uri, iterations=3, progress=False)
    assert str(in_runner.value).startswith("EnvRunner 2 cannot read its training data")  # posted by that runner
    _assert_failed_naming(tracker, first["run_id"], victim, ckpt)


def test_a_data_error_is_found_inside_a_ray_task_error_and_an_actor_death_is_not_one():
    import ray.exceptions

    err = DataError("shard /x/part-00001.parquet is corrupt or unreadable: truncated")
    wrapped = ray.exceptions.RayTaskError("sample", "Traceback ...", err).as_instanceof_cause()
    assert data_error_of(wrapped) is err
    try:
        raise RuntimeError("sampling failed") from wrapped
    except RuntimeError as chained:
        assert data_error_of(chained) is err
    assert data_error_of(ray.exceptions.RayActorError()) is None  # a dead process restarts: no data error
    assert data_error_of(RuntimeError("x")) is None


@pytest.mark.slow
def test_a_posted_data_error_fails_the_iteration_and_a_clean_one_passes(ray_local):
    """The driver's side of the mailbox: a clean iteration returns its result, one after which an EnvRunner
    posted a data error raises it (naming the runner), and an exception of `train()` carrying one is explained."""
    import ray.exceptions

    from posisp_dist.train.endings import EnvRunnerDataErrors

    class Algo:
        def __init__(self, fail: BaseException | None = None) -> None:
            self.fail = fail

        def train(self) -> dict:
            if self.fail is not None:
                raise self.fail
            return {"ok": 1}

    errors = EnvRunnerDataErrors(remote_env_runners=True)
    try:
        assert errors.train(Algo()) == {"ok": 1}
        errors.mailbox.post(3, "shard /x/part-00002.parquet is corrupt or unreadable: truncated")
        with pytest.raises(DataError, match=r"^EnvRunner 3 cannot read its training data.*part-00002"):
            errors.train(Algo())
        assert errors.train(Algo()) == {"ok": 1}  # read once
        with pytest.raises(RuntimeError, match="unrelated"):
            errors.train(Algo(RuntimeError("unrelated")))
        bad = DataError("shard /x/part-00004.parquet is corrupt or unreadable: truncated")
        remote = ray.exceptions.RayTaskError("sample", "Traceback ...", bad).as_instanceof_cause()
        with pytest.raises(DataError, match=r"^an EnvRunner cannot read its training data.*part-00004") as info:
            errors.train(Algo(remote))
        assert info.value.__cause__ is remote
    finally:
        errors.close()


def _wait_for_params(tracker: Tracker, proc, log: Path, timeout: float) -> str:
    """Run id once the driver logged the run's params (it is then inside its signal handling)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, f"the driver exited early:\n{log.read_text()[-3000:]}"
        runs = tracker.client.search_runs([tracker.experiment_id])
        if runs and runs[0].data.params:
            return runs[0].info.run_id
        time.sleep(0.2)
    raise TimeoutError(f"no run with params within {timeout} s")


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_ends_the_run_killed_with_its_reason_and_no_traceback(
    signum, tiny_cfg, tiny_data, tiny_task, tmp_path, driver_process  # noqa: F811
):
    raw = small_raw(tiny_cfg, tmp_path, iterations=500, runners=1)
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(raw))
    tracker = Tracker(raw["tracking"]["uri"], "posisp")
    proc = driver_process(path)
    log = tmp_path / "driver.log"
    if signum == signal.SIGTERM:  # mid-training, with Ray up (ray.init installs its own SIGTERM handler)
        run_id = _wait_for_iterations(tracker, proc, log, 1, timeout=180)
    else:  # as early as the run exists
        run_id = _wait_for_params(tracker, proc, log, timeout=180)
    proc.send_signal(signum)
    assert proc.wait(timeout=120) == 128 + signum
    _kill_session(proc.pid)
    run = tracker.get_run(run_id)
    name = signal.Signals(signum).name
    assert run.info.status == "KILLED" and name in run.data.tags[END_REASON_TAG]
    text = log.read_text()
    assert "Traceback" not in text and f"stopped by {name}" in text


def test_a_signal_during_a_store_call_is_raised_after_it_so_the_run_still_ends_killed(tmp_path, monkeypatch):
    """A KeyboardInterrupt inside MLflow's SQLAlchemy transaction skipped its rollback and left the sqlite store
    locked: the run stayed RUNNING (CI, SIGINT sent while the driver logged its params). The call finishes first."""
    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "posisp")
    store_set_tag, hits = tracker.client._client.set_tag, []

    def set_tag_hit_by_sigint(run_id: str, key: str, value: str) -> None:
        if not hits:
            hits.append(key)
            os.kill(os.getpid(), signal.SIGINT)  # arrives while the store call is in progress
        store_set_tag(run_id, key, value)

    monkeypatch.setattr(tracker.client._client, "set_tag", set_tag_hit_by_sigint)
    with pytest.raises(Interrupted, match="SIGINT"), signals_end_the_run(), tracker:
        run_id = tracker.start(run_name="x")
        tracker.set_tags({"a": "1"})
        pytest.fail("the signal was not raised when the store call ended")
    run = tracker.get_run(run_id)
    assert hits == ["a"] and run.data.tags["a"] == "1"  # the interrupted call finished
    assert run.info.status == "KILLED" and "SIGINT" in run.data.tags[END_REASON_TAG]


def test_a_held_back_signal_outranks_the_error_of_the_call_it_waited_for():
    """A store call that fails after the signal arrived must not swallow the stop (the caller may go on)."""
    with signals_end_the_run(), pytest.raises(Interrupted, match="SIGTERM") as info, uninterrupted():
        os.kill(os.getpid(), signal.SIGTERM)
        raise OSError("the store went away")
    assert isinstance(info.value.__context__, OSError)


def test_a_finished_and_a_failed_run_record_why_they_ended(tmp_path):
    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "posisp")
    with tracker:
        ok = tracker.start(run_name="ok")
    with pytest.raises(ValueError), tracker:
        bad = tracker.start(run_name="bad")
        raise ValueError("bad input")
    assert tracker.get_run(ok).data.tags[END_REASON_TAG] == "finished"
    assert tracker.get_run(bad).data.tags[END_REASON_TAG] == "ValueError: bad input"
