"""`ray job submit --working-dir . -- posisp train ...` against a real `ray start --head`: the job trains on
that cluster from Ray's temporary copy of the project, its MLflow run lands under POSISP_HOME (outside the
copy) with metrics and checkpoints, the upload leaves local state out, and bad addresses fail fast."""

from __future__ import annotations

import json
import shlex
import subprocess
import time
import uuid
import zipfile
from pathlib import Path

import pytest
from conftest import tiny_overrides
from ray_head import CLIENT_ENV, RayHead, free_port

from posisp_dist.cli import main, parse_sets
from posisp_dist.config import flatten
from posisp_dist.paths import JOB_CONFIG_ENV, ephemeral_home_warning, resolve
from posisp_dist.runs.tracking import Tracker, default_tracking_uri

REPO = Path(__file__).resolve().parents[1]
ITERS, BATCH = 2, 64


def job_overrides(tiny_cfg) -> dict:
    """configs/quick.yaml shrunk to seconds, reusing the session's tiny dataset and detector (absolute paths);
    train.out_dir and the MLflow store stay default and relative, so they must land under POSISP_HOME."""
    flat = flatten(tiny_cfg)
    return {
        **{k: flat[k] for k in tiny_overrides(Path("."))},
        "env.preview_size": 16,
        "env.num_envs_per_runner": 16,
        "ppo.train_batch_size": BATCH,
        "ppo.minibatch_size": 32,
        "ppo.num_epochs": 1,
        "train.iterations": ITERS,
        "train.num_env_runners": 1,
        "train.checkpoint_every": 1,
        "train.grid_images": 2,
    }


@pytest.fixture(scope="module")
def head():
    with pytest.MonkeyPatch.context() as mp:
        for k, v in CLIENT_ENV.items():
            mp.setenv(k, v)  # for the job CLI and the SDK clients in this process
        h = RayHead(num_cpus=2).start()
        yield h
        h.stop()


def _wait(client, sid: str, timeout_s: float) -> str:
    from ray.job_submission import JobStatus

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = client.get_job_status(sid)
        if status in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED):
            return str(status.value)
        time.sleep(1)
    client.stop_job(sid)
    return "TIMEOUT"


@pytest.mark.slow
def test_job_submit_trains_on_the_cluster_and_its_run_outlives_the_working_dir(
    head, tiny_cfg, tiny_data, tiny_task, tmp_path
):
    from ray.job_submission import JobSubmissionClient
    from ray.util.state import list_actors

    home = tmp_path / "home"
    sets = [f"--set {shlex.quote(f'{k}={json.dumps(v)}')}" for k, v in job_overrides(tiny_cfg).items()]
    entrypoint = f"posisp train --config configs/quick.yaml --quiet {' '.join(sets)}"
    sid = f"posisp-test-{uuid.uuid4().hex[:8]}"
    t0 = time.monotonic()
    submit = subprocess.run(
        ["ray", "job", "submit", "--address", head.dashboard_url, "--working-dir", str(REPO), "--no-wait",
         "--submission-id", sid, "--runtime-env-json", json.dumps({"env_vars": {"POSISP_HOME": str(home)}}),
         "--", *shlex.split(entrypoint)],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert submit.returncode == 0, submit.stdout + submit.stderr
    client = JobSubmissionClient(head.dashboard_url)
    where = "import os, posisp_dist; print('posisp_dist from', os.path.dirname(posisp_dist.__file__), os.getcwd())"
    probe = client.submit_job(entrypoint=f"python -c {shlex.quote(where)}", runtime_env={"working_dir": str(REPO)})
    status = _wait(client, sid, timeout_s=240)
    logs = client.get_job_logs(sid)
    assert status == "SUCCEEDED", logs[-4000:]
    print(f"job {sid} SUCCEEDED {time.monotonic() - t0:.1f} s after submission")

    # a job imports the uploaded copy of the project (Ray puts the working_dir first on PYTHONPATH)
    assert _wait(client, probe, timeout_s=60) == "SUCCEEDED", client.get_job_logs(probe)
    line = next(x for x in client.get_job_logs(probe).splitlines() if x.startswith("posisp_dist from "))
    package, cwd = Path(line.split()[2]), Path(line.split()[3])
    assert package.parent == cwd and cwd != REPO and REPO not in cwd.parents and "_ray_pkg_" in cwd.name

    # the driver joined this cluster (RAY_ADDRESS from the job supervisor): its EnvRunner ran here
    job_id = client.get_job_info(sid).job_id
    runners = list_actors(address=head.address, filters=[("class_name", "=", "SingleAgentEnvRunner")], detail=True)
    assert any(a.job_id == job_id for a in runners), [(a.class_name, a.job_id) for a in runners]

    # the run is where POSISP_HOME says, outside the job's (temporary) working_dir, and the job said so
    uri = default_tracking_uri(home / ".posisp" / "mlflow")
    run_id = next(line.split()[-1] for line in logs.splitlines() if line.startswith("MLflow run: "))
    assert f"MLflow tracking URI: {uri}" in logs
    tracker = Tracker(uri, "posisp")
    run = tracker.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["train.num_env_runners"] == "1" and run.data.params["train.iterations"] == str(ITERS)
    assert [s for s, _ in tracker.history("charts/iteration", run_id)] == [BATCH * i for i in range(1, ITERS + 1)]
    assert len(tracker.history("charts/episode_reward_mean", run_id)) == ITERS
    ckpts = {a.path for a in tracker.client.list_artifacts(run_id, "checkpoints")}
    assert f"checkpoints/iter_{ITERS:06d}" in ckpts
    assert (home / ".posisp" / "runs" / run_id / "checkpoints" / f"iter_{ITERS:06d}").is_dir()
    assert "posisp: warning" not in logs  # POSISP_HOME was set: nothing went to the temporary copy


def test_working_dir_upload_leaves_local_state_out(tmp_path):
    from ray._private.runtime_env.packaging import create_package

    pkg = tmp_path / "pkg.zip"
    create_package(str(REPO), pkg, include_parent_dir=False, excludes=[], include_gitignore=True)
    names = zipfile.ZipFile(pkg).namelist()
    assert {"posisp_dist/cli.py", "envs/factory.py", "configs/quick.yaml", "pyproject.toml"} <= set(names)
    leaked = [n for n in names if n.split("/")[0] in (".git", ".posisp", "out", "mlruns") or "__pycache__" in n]
    assert not leaked and not any(n.startswith("bench/results/") for n in names)
    assert pkg.stat().st_size < 5 * 2**20


def test_unreachable_ray_address_fails_fast_and_names_the_address(capsys):
    port = free_port()  # nothing listens there
    t0 = time.monotonic()
    code = main(["train", "--config", str(REPO / "configs/quick.yaml"), "--set", f"train.ray_address=127.0.0.1:{port}"])
    assert code == 2 and time.monotonic() - t0 < 10
    assert f"127.0.0.1:{port}" in capsys.readouterr().err
    assert (
        main(["train", "--config", str(REPO / "configs/quick.yaml"), "--set", "train.ray_address=http://h:8265"]) == 2
    )
    assert "dashboard URL" in capsys.readouterr().err


def test_set_overrides_are_yaml_values_and_bad_ones_are_clear_errors(capsys):
    assert parse_sets(["train.num_env_runners=4", "data.object_size=[12, 28]", "train.ray_address=null"]) == {
        "train.num_env_runners": 4, "data.object_size": [12, 28], "train.ray_address": None}  # fmt: skip
    assert main(["train", "--config", str(REPO / "configs/quick.yaml"), "--set", "train.num_env_runners"]) == 2
    assert "section.field=value" in capsys.readouterr().err
    assert main(["train", "--config", str(REPO / "configs/quick.yaml"), "--set", "train.num_env_runner=4"]) == 2
    assert "num_env_runner" in capsys.readouterr().err


def test_relative_paths_follow_posisp_home_and_jobs_without_it_are_warned(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("POSISP_HOME", str(tmp_path))
    assert resolve(".posisp/runs") == tmp_path / ".posisp" / "runs" and resolve("/abs/x") == Path("/abs/x")
    assert default_tracking_uri() == f"sqlite:///{tmp_path}/.posisp/mlflow/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.internal:5000")
    assert default_tracking_uri() == "http://mlflow.internal:5000"  # MLflow's own variable wins over the default
    job = json.dumps({"runtime_env": {"working_dir": "gcs://_ray_pkg_abc.zip"}, "metadata": {}})
    monkeypatch.setenv(JOB_CONFIG_ENV, job)
    assert ephemeral_home_warning([".posisp/runs"]) is None  # POSISP_HOME set
    monkeypatch.delenv("POSISP_HOME")
    assert "POSISP_HOME" in ephemeral_home_warning([".posisp/runs"])
    assert ephemeral_home_warning([]) is None  # everything absolute: nothing to lose
    monkeypatch.delenv(JOB_CONFIG_ENV)
    assert ephemeral_home_warning([".posisp/runs"]) is None  # not a Ray job
