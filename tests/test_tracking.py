"""MLflow adapter on throwaway sqlite stores: batching, history, artifacts, resume, failures, tags."""

from __future__ import annotations

import re
import time

import mlflow
import pytest

from posisp_dist.runs.tracking import Tracker, TrackingError, default_tracking_uri, run_tags


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    """One sqlite database per module (creating its tables takes ~2 s); tests use their own experiments."""
    return default_tracking_uri(tmp_path_factory.mktemp("mlflow"))


@pytest.fixture
def tracker(store, request, tmp_path) -> Tracker:
    """A tracker on a fresh experiment named after the test, artifacts under tmp_path."""
    return Tracker(store, request.node.name, artifact_root=str(tmp_path / "artifacts"))


def test_params_are_batched_and_all_stored(tracker):
    tracker.start("params")
    params = {f"section.key_{i:03d}": i for i in range(250)}
    params.update({"data.object_size": (12, 28), "names": ["a", "b"], "flag": True, "none": None})
    tracker.log_params(params)
    stored = tracker.get_run().data.params
    assert len(stored) == 254
    assert stored["section.key_249"] == "249"
    assert stored["data.object_size"] == "[12, 28]"
    assert stored["names"] == '["a", "b"]'
    assert stored["flag"] == "True" and stored["none"] == "None"
    tracker.log_params(params)  # same values again: skipped, not refused
    tracker.end()


def test_metrics_history_is_sorted_by_step_and_skips_bad_values(tracker):
    tracker.start("metrics")
    for step, value in [(200, 3.0), (0, 1.0), (100, 2.0)]:
        tracker.log_metrics({"charts/return": value, "charts/nan": float("nan"), "charts/name": "x"}, step=step)
    tracker.log_metrics({f"isp/m{i}": float(i) for i in range(1200)}, step=5)  # over one batch of 1000
    assert tracker.history("charts/return") == [(0, 1.0), (100, 2.0), (200, 3.0)]
    assert tracker.history("charts/nan") == []
    assert tracker.history("charts/name") == []
    assert tracker.history("isp/m1199") == [(5, 1199.0)]
    assert len(tracker.get_run().data.metrics) == 1201


def test_artifact_round_trip(tracker, tmp_path):
    src = tmp_path / "src"
    (src / "ckpt" / "inner").mkdir(parents=True)
    (src / "config.yaml").write_text("a: 1\n")
    blob = bytes(range(256)) * 10
    (src / "ckpt" / "weights.bin").write_bytes(blob)
    (src / "ckpt" / "inner" / "state.json").write_text('{"x": 2}')
    tracker.start("artifacts")
    tracker.log_artifact(src / "config.yaml")
    tracker.log_artifact(src / "ckpt")
    tracker.log_artifact(src / "ckpt" / "weights.bin", artifact_path="copies")
    tracker.log_dict({"pipeline": ["gamma", "ccm"]}, "best/pipelines.json")
    tracker.log_text("hello", "notes/readme.txt")
    with pytest.raises(FileNotFoundError):
        tracker.log_artifact(src / "missing.txt")
    dst = tmp_path / "dst"
    assert tracker.download_artifacts("config.yaml", dst).read_bytes() == b"a: 1\n"
    ckpt = tracker.download_artifacts("ckpt", dst)
    assert (ckpt / "weights.bin").read_bytes() == blob
    assert (ckpt / "inner" / "state.json").read_text() == '{"x": 2}'
    assert tracker.download_artifacts("copies/weights.bin", dst).read_bytes() == blob
    assert '"gamma"' in tracker.download_artifacts("best/pipelines.json", dst).read_text()
    assert tracker.download_artifacts("notes/readme.txt", dst).read_text() == "hello"
    assert tracker.get_run().info.artifact_uri.startswith((tmp_path / "artifacts").as_uri())
    with pytest.raises(TrackingError, match="nope.txt"):
        tracker.download_artifacts("nope.txt", dst)


def test_resume_reopens_the_same_run(tracker):
    rid = tracker.start("first", tags={"phase": "1"})
    tracker.log_params({"lr": 0.001})
    tracker.log_metrics({"charts/return": -5.0}, step=100)
    tracker.end()
    assert tracker.get_run(rid).info.status == "FINISHED"
    assert tracker.run_id is None

    again = tracker.start(resume_run_id=rid, tags={"phase": "2"})
    assert again == rid == tracker.run_id
    run = tracker.get_run()
    assert run.info.status == "RUNNING" and run.data.tags["phase"] == "2"
    tracker.log_params({"lr": 0.001, "new_param": 3})
    tracker.log_metrics({"charts/return": -4.0}, step=200)
    tracker.end()
    assert tracker.history("charts/return", run_id=rid) == [(100, -5.0), (200, -4.0)]
    assert tracker.get_run(rid).data.params == {"lr": "0.001", "new_param": "3"}


def test_conflicting_param_on_resume_names_the_key(tracker):
    rid = tracker.start()
    tracker.log_params({"train.lr": 0.001, "train.gamma": 0.99})
    tracker.end()
    tracker.start(resume_run_id=rid)
    with pytest.raises(TrackingError, match=r"train\.lr") as info:
        tracker.log_params({"train.lr": 0.01, "train.gamma": 0.99})
    assert "train.gamma" not in str(info.value)
    assert tracker.get_run().data.params["train.lr"] == "0.001"


def test_unknown_resume_id_names_it(tracker):
    with pytest.raises(TrackingError, match="0123456789abcdef"):
        tracker.start(resume_run_id="0123456789abcdef")


def test_context_manager_failure_marks_failed_with_error(tracker, tmp_path):
    with pytest.raises(ValueError, match="boom"):
        with tracker:
            rid = tracker.start("fails")
            raise ValueError("boom " + "x" * 6000)
    run = tracker.get_run(rid)
    assert run.info.status == "FAILED"
    assert run.data.tags["error"].startswith("ValueError: boom")
    assert len(run.data.tags["error"]) == 5000
    text = tracker.download_artifacts("error.txt", tmp_path / "dl", run_id=rid).read_text()
    assert "Traceback" in text and "ValueError: boom" in text


def test_context_manager_statuses(tracker):
    with tracker:
        ok = tracker.start("ok")
    assert tracker.get_run(ok).info.status == "FINISHED"
    with pytest.raises(KeyboardInterrupt):
        with tracker:
            killed = tracker.start("killed")
            raise KeyboardInterrupt
    run = tracker.get_run(killed)
    assert run.info.status == "KILLED" and run.data.tags["error"].startswith("KeyboardInterrupt")
    with pytest.raises(ValueError, match="status"):
        tracker.end("DONE")


def test_unreachable_store_fails_fast_and_names_uri(monkeypatch):
    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", raising=False)
    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_TIMEOUT", raising=False)
    start = time.perf_counter()
    with pytest.raises(TrackingError, match=re.escape("http://127.0.0.1:9")):
        Tracker("http://127.0.0.1:9", "nowhere")
    assert time.perf_counter() - start < 10


def test_default_uri_creates_db_dir_and_artifacts_beside_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    uri = default_tracking_uri("nested/store")
    db = tmp_path / "nested" / "store" / "mlflow.db"
    assert uri == "sqlite:///" + str(db) and uri.startswith("sqlite:////")
    tracker = Tracker(uri, "exp")
    assert db.is_file()
    tracker.start()
    assert tracker.get_run().info.artifact_uri.startswith((db.parent / "artifacts").as_uri())
    relative = Tracker(uri, "exp-relative-root", artifact_root="arts")
    relative.start()
    assert relative.get_run().info.artifact_uri.startswith((tmp_path / "arts").as_uri())


def test_run_tags_has_sha_and_versions():
    tags = run_tags(backend="numpy", device="cpu")
    assert re.fullmatch(r"([0-9a-f]{40}(-dirty)?|unknown)", tags["git_sha"])
    for key in ("ray_version", "torch_version", "gymnasium_version", "mlflow_version", "numpy_version"):
        assert tags[key]
    assert tags["mlflow_version"] == mlflow.__version__
    assert tags["device"] == "cpu" and tags["array_backend"] == "numpy"
    assert tags["python_version"].count(".") == 2 and tags["hostname"]
    assert all(isinstance(v, str) for v in tags.values())


def test_a_copied_store_reads_and_writes_artifacts_in_its_own_tree(tmp_path):
    import shutil

    first = tmp_path / "project" / ".posisp" / "mlflow"
    tracker = Tracker(default_tracking_uri(first), "posisp")
    with tracker:
        old_run = tracker.start(run_name="before the copy")
        tracker.log_text("kept", "note.txt")
    copy = tmp_path / "copy" / ".posisp" / "mlflow"
    shutil.copytree(first, copy)
    shutil.rmtree(tmp_path / "project")  # moved, not only copied: the old tree is gone
    moved = Tracker(default_tracking_uri(copy), "posisp")
    assert moved.client.get_experiment(moved.experiment_id).artifact_location.startswith((copy / "artifacts").as_uri())
    assert (moved.download_artifacts("note.txt", tmp_path / "dl", old_run)).read_text() == "kept"
    with moved:
        moved.start(run_name="after the copy")
        moved.log_text("new", "new.txt")
    assert len(list((copy / "artifacts").rglob("new.txt"))) == 1
    assert not (tmp_path / "project").exists()  # nothing written back into the original tree


RO_PROBE = r"""
import subprocess, sys, time
src, mnt = sys.argv[1], sys.argv[2]
subprocess.run(["mount", "--bind", src, mnt], check=True)
subprocess.run(["mount", "-o", "remount,ro,bind", mnt], check=True)
from posisp_dist.cli import main
t0 = time.monotonic()
rc_new = main(["train", "--config", "configs/quick.yaml", "--tracking-uri", f"sqlite:///{mnt}/new/mlflow.db"])
print("NEW", rc_new, round(time.monotonic() - t0, 1), flush=True)
rc_old = main(["train", "--config", "configs/quick.yaml", "--tracking-uri", f"sqlite:///{mnt}/mlflow.db"])
print("OLD", rc_old, flush=True)
"""


@pytest.mark.slow
def test_read_only_sqlite_stores_fail_fast_in_one_line(tmp_path):
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    if shutil.which("unshare") is None or subprocess.run(["unshare", "-m", "true"]).returncode != 0:
        pytest.skip("needs a private mount namespace (unshare -m) to make a read-only mount")
    src, mnt = tmp_path / "store", tmp_path / "mnt"
    (src / "new").mkdir(parents=True)
    mnt.mkdir()
    with Tracker(default_tracking_uri(src), "posisp") as existing:
        existing.start(run_name="made before the mount went read-only")
    repo = Path(__file__).resolve().parents[1]
    out = subprocess.run(["unshare", "-m", sys.executable, "-c", RO_PROBE, str(src), str(mnt)], cwd=repo,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    new = next(line.split() for line in out.stdout.splitlines() if line.startswith("NEW"))
    assert new[1] == "2" and float(new[2]) < 60  # not MLflow's minutes of retries
    assert "OLD 2" in out.stdout
    errors = [line for line in out.stderr.splitlines() if line.startswith("posisp: error:")]
    assert len(errors) == 2 and "cannot be created" in errors[0] and "read-only" in errors[1]
    assert "Traceback" not in out.stderr


def test_a_full_artifact_store_still_ends_the_run_failed_with_a_one_line_warning(tracker, capsys, monkeypatch):
    """The terminal state is set first; error.txt that cannot be uploaded (no space left) costs a warning only."""
    tracker.start("full")
    run_id = tracker.run_id

    def no_space(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(tracker.client, "log_text", no_space)
    with pytest.raises(RuntimeError, match="boom"), tracker:
        raise RuntimeError("boom")
    run = tracker.get_run(run_id)
    assert run.info.status == "FAILED" and run.data.tags["error"] == "RuntimeError: boom"
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "ended FAILED" in err[0] and "error.txt" in err[0] and "No space left" in err[0]


def test_a_run_resumed_to_finished_drops_its_stale_error_tag(tracker):
    tracker.start("stale")
    run_id = tracker.run_id
    tracker.end("FAILED", RuntimeError("first attempt"))
    assert tracker.get_run(run_id).data.tags["error"] == "RuntimeError: first attempt"
    tracker.start(resume_run_id=run_id)
    tracker.end("FINISHED")
    run = tracker.get_run(run_id)
    assert run.info.status == "FINISHED" and "error" not in run.data.tags
    assert run.data.tags["posisp.end_reason"] == "finished"


@pytest.mark.slow
def test_first_commands_racing_on_a_new_store_all_succeed(tmp_path):
    """Three processes open the same new sqlite store at once: one creates its tables, the others wait for it."""
    import subprocess
    import sys

    uri = f"sqlite:///{tmp_path / 'new' / 'mlflow.db'}"
    code = ("import sys\nfrom posisp_dist.runs.tracking import Tracker\n"
            f"t = Tracker({uri!r}, 'race-' + sys.argv[1])\nt.start('r')\nt.end()\nprint('ok')\n")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(i)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for i in range(3)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], [err[-500:] for _, err in outs]
    assert all(out.strip() == "ok" for out, _ in outs)
    assert len(Tracker(uri, "race-0").client.search_experiments()) >= 3
