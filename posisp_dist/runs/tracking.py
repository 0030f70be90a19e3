"""The one thin MLflow adapter: an explicit tracking URI, a client (no fluent globals), batched logging."""

from __future__ import annotations

import fcntl
import json
import math
import numbers
import os
import platform
import socket
import subprocess
import sys
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from types import TracebackType
from typing import Any

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, Run
from mlflow.exceptions import MlflowException

from posisp_dist.paths import resolve
from posisp_dist.runs.signals import uninterrupted

PARAMS_PER_BATCH = 100  # MLflow's limit for params (and tags) in one log_batch
METRICS_PER_BATCH = 1000  # MLflow's limit for metrics in one log_batch
MAX_PARAM_CHARS = 6000  # MLflow rejects longer param values
MAX_ERROR_CHARS = 5000
STATUSES = ("FINISHED", "FAILED", "KILLED")
END_REASON_TAG = "posisp.end_reason"
VERSIONED = ("ray", "torch", "gymnasium", "mlflow", "numpy")


class TrackingError(RuntimeError):
    """MLflow unreachable or a run that cannot be found; message names the URI / run id."""


def sqlite_path(uri: str) -> Path | None:
    """The database file of a sqlite URI, or None for other stores and in-memory databases."""
    if not uri.startswith("sqlite:///"):
        return None
    path = uri[len("sqlite:///") :].split("?", 1)[0]
    return None if not path or path == ":memory:" else Path(path)


def _check_sqlite_store(db: Path, uri: str) -> str | None:
    """Fail at once, in one line, where a sqlite store cannot be created (MLflow would retry for minutes); return
    why an existing store is read-only (it can be read, not logged to), or None."""
    hint = "set tracking.uri (or --tracking-uri) to a writable place"
    try:
        db.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise TrackingError(f"MLflow store {uri}: cannot make {db.parent} ({e.strerror or e}); {hint}") from None
    if not db.exists():
        if not os.access(db.parent, os.W_OK):
            raise TrackingError(f"MLflow store {uri} cannot be created: {db.parent} is not writable; {hint}")
        return None
    if not (os.access(db, os.W_OK) and os.access(db.parent, os.W_OK)):  # sqlite writes a journal beside the file
        return f"MLflow store {uri} is read-only ({db} or its folder is not writable); {hint}"
    return None


@contextmanager
def _creation_lock(db: Path | None) -> Iterator[None]:
    """Exclusive while a sqlite store is opened for the first time in this process (MLflow creates and migrates
    its tables then, which two processes must not do at once); a no-op for other stores and read-only folders."""
    if db is None or not os.access(db.parent, os.W_OK):
        yield
        return
    with open(db.parent / f".{db.name}.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # blocks until the other process has made the store
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _rebase_artifacts(db: Path, root_uri: str) -> None:
    """Point a copied or moved store's artifact locations at the artifacts beside its own database.

    MLflow records absolute artifact locations; a store whose folder was copied or moved (with the project) would
    go on reading and writing the original tree. A location that is another folder's `artifacts` next to a store
    is the old place of ours: rewrite it (and its runs' URIs) to `root_uri`. Other locations are left alone."""
    import sqlite3

    if not db.is_file():
        return
    try:
        with sqlite3.connect(db, timeout=30) as con:
            rows = con.execute("SELECT DISTINCT artifact_location FROM experiments").fetchall()
            for (old,) in rows:
                if not old or old == root_uri or not old.startswith("file://") or not old.endswith("/artifacts"):
                    continue
                con.execute("UPDATE experiments SET artifact_location = ? WHERE artifact_location = ?", (root_uri, old))
                con.execute(
                    "UPDATE runs SET artifact_uri = ? || substr(artifact_uri, ?) WHERE substr(artifact_uri, 1, ?) = ?",
                    (root_uri, len(old) + 1, len(old) + 1, old + "/"),
                )
    except sqlite3.Error:  # not an MLflow database yet (or read-only): MLflow itself reports what is wrong
        return


def _param_value(value: Any) -> str:
    """A param value as MLflow stores it: str, with tuples/lists/dicts as JSON, cut to MLflow's limit."""
    if isinstance(value, tuple | list | dict):
        text = json.dumps(value, default=str)
    else:
        text = str(value)
    return text[:MAX_PARAM_CHARS]


def _metric_value(value: Any) -> float | None:
    """A finite float, or None for non-numeric / non-finite values."""
    if not isinstance(value, numbers.Real):
        return None
    out = float(value)
    return out if math.isfinite(out) else None


class _WholeCalls:
    """An MlflowClient whose every call runs whole: a stop signal that arrives during one is raised after it
    (`runs/signals.py`), so no store transaction is left half done and the run can still be ended KILLED."""

    def __init__(self, client: MlflowClient) -> None:
        self._client = client

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._client, name)
        if not callable(attr):
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            with uninterrupted():
                return attr(*args, **kwargs)

        return call


class Tracker:
    """One MLflow experiment on an explicit tracking URI; one active run at a time."""

    def __init__(self, uri: str, experiment: str, artifact_root: str | None = None) -> None:
        """Connect to the store and create the experiment if missing."""
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # config.json is no download to watch
        self.uri = uri
        self.run_id: str | None = None
        db = sqlite_path(uri)
        self.read_only_reason: str | None = None
        if db is not None:
            self.read_only_reason = _check_sqlite_store(db, uri)
            if artifact_root is None:  # MLflow's default is ./mlruns under whatever the CWD happens to be
                artifact_root = str(db.parent / "artifacts")
                _rebase_artifacts(db, resolve(artifact_root).as_uri())
        location = artifact_root
        if artifact_root and "://" not in artifact_root:
            location = resolve(artifact_root).as_uri()
        try:
            with _creation_lock(db):  # two first commands on a new store: one creates its tables, the other waits
                self.client: Any = _WholeCalls(MlflowClient(tracking_uri=uri))
                self.experiment_id = self._experiment(experiment, location)
        except Exception as exc:  # any failure here means the store cannot be used
            raise TrackingError(f"MLflow tracking store {uri} is unreachable: {exc}") from exc

    def _experiment(self, name: str, location: str | None) -> str:
        """Id of the named experiment, created (or restored from deleted) when needed."""
        exp = self.client.get_experiment_by_name(name)
        if exp is None:
            try:
                return self.client.create_experiment(name, artifact_location=location)
            except MlflowException:  # created concurrently by another process
                exp = self.client.get_experiment_by_name(name)
                if exp is None:
                    raise
        if exp.lifecycle_stage == "deleted":
            self.client.restore_experiment(exp.experiment_id)
        return exp.experiment_id

    def _writable(self) -> None:
        if self.read_only_reason:
            raise TrackingError(self.read_only_reason)

    def attach(self, run_id: str) -> str:
        """Log into an existing run without changing its status (eval results on a finished run)."""
        self._writable()
        self.run_id = self.get_run(run_id).info.run_id
        return self.run_id

    def _rid(self, run_id: str | None = None) -> str:
        """The given run id, else the active one."""
        rid = run_id or self.run_id
        if rid is None:
            raise TrackingError(f"no active MLflow run on {self.uri}; call start() first")
        return rid

    def start(
        self, run_name: str | None = None, resume_run_id: str | None = None, tags: dict[str, str] | None = None
    ) -> str:
        """Start a new run, or reopen an existing one (status back to RUNNING); returns the run id."""
        self._writable()
        if resume_run_id:
            run = self.get_run(resume_run_id)
            self.client.update_run(resume_run_id, status="RUNNING", name=run_name)
            self.run_id = run.info.run_id
            if tags:
                self.set_tags(tags)
        else:
            run = self.client.create_run(self.experiment_id, tags=dict(tags or {}), run_name=run_name)
            self.run_id = run.info.run_id
        return self.run_id

    def get_run(self, run_id: str | None = None) -> Run:
        """The run entity (params, metrics, tags, info)."""
        rid = self._rid(run_id)
        try:
            return self.client.get_run(rid)
        except MlflowException as exc:
            raise TrackingError(f"MLflow run {rid} not found on {self.uri}: {exc}") from exc

    def log_params(self, params: dict[str, Any]) -> None:
        """Log a flat dict of params in batches; values already stored are skipped, changed ones refused."""
        rid = self._rid()
        existing = self.get_run(rid).data.params
        values = {key: _param_value(value) for key, value in params.items()}
        differ = sorted(key for key, value in values.items() if key in existing and existing[key] != value)
        if differ:
            shown = ", ".join(f"{k} ({existing[k]!r} -> {values[k]!r})" for k in differ[:10])
            raise TrackingError(f"run {rid} already has different values for params: {shown}")
        new = [Param(key, value) for key, value in values.items() if key not in existing]
        for i in range(0, len(new), PARAMS_PER_BATCH):
            self.client.log_batch(rid, params=new[i : i + PARAMS_PER_BATCH], synchronous=True)

    def set_tags(self, tags: dict[str, str]) -> None:
        """Set (or overwrite) run tags."""
        rid = self._rid()
        for key, value in tags.items():
            self.client.set_tag(rid, key, str(value))

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        """Log finite numeric metrics at `step` (env steps); anything else is skipped."""
        rid = self._rid()
        now = int(time.time() * 1000)
        rows = []
        for key, value in metrics.items():
            val = _metric_value(value)
            if val is not None:
                rows.append(Metric(key, val, now, int(step)))
        for i in range(0, len(rows), METRICS_PER_BATCH):
            self.client.log_batch(rid, metrics=rows[i : i + METRICS_PER_BATCH], synchronous=True)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        """Upload a file, or a directory (under its own name unless `artifact_path` is given)."""
        path = Path(path)
        if path.is_dir():
            self.client.log_artifacts(self._rid(), str(path), artifact_path or path.name)
        elif path.is_file():
            self.client.log_artifact(self._rid(), str(path), artifact_path)
        else:
            raise FileNotFoundError(f"artifact {path} does not exist")

    def log_dict(self, obj: Any, artifact_file: str) -> None:
        """Store `obj` as a JSON artifact."""
        self.log_text(json.dumps(obj, indent=2, default=str), artifact_file)

    def log_text(self, text: str, artifact_file: str) -> None:
        """Store `text` as an artifact file."""
        self.client.log_text(self._rid(), text, artifact_file)

    def download_artifacts(self, artifact_path: str, dst: str | Path, run_id: str | None = None) -> Path:
        """Download an artifact file or directory into `dst`; returns the local path."""
        rid = self._rid(run_id)
        Path(dst).mkdir(parents=True, exist_ok=True)
        try:
            return Path(self.client.download_artifacts(rid, artifact_path, str(dst)))
        except (MlflowException, OSError) as exc:
            raise TrackingError(f"cannot download {artifact_path!r} of run {rid} from {self.uri}: {exc}") from exc

    def end(self, status: str = "FINISHED", error: BaseException | None = None) -> None:
        """Terminate the active run: its terminal state first, then, best effort, why it ended (a tag) and with
        an error its traceback as error.txt. A store or artifact root that refuses those writes (full, read-only)
        costs a one-line warning, never the terminal state."""
        if status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, got {status!r}")
        if self.run_id is None:
            return
        run_id, self.run_id = self.run_id, None
        reason = "finished" if error is None else f"{type(error).__name__}: {error}"[:MAX_ERROR_CHARS]
        steps = [("its terminal state", lambda: self.client.set_terminated(run_id, status=status)),
                 ("why it ended", lambda: self.client.set_tag(run_id, END_REASON_TAG, reason))]
        if error is None:  # a run resumed to FINISHED keeps no stale error tag from an earlier ending
            steps.append(("the stale error tag", lambda: self._drop_tag(run_id, "error")))
        else:
            tb = "".join(traceback.format_exception(type(error), error, error.__traceback__))
            steps += [("the error tag", lambda: self.client.set_tag(run_id, "error", reason)),
                      ("error.txt", lambda: self.client.log_text(run_id, tb, "error.txt"))]
        failed = []
        for what, step in steps:
            try:
                step()
            except Exception as e:  # noqa: BLE001 (best effort: report, and go on to the next write)
                failed.append(f"{what} ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})")
        if failed:
            print(f"posisp: warning: run {run_id} ended {status}, but the tracking store did not take "
                  f"{'; '.join(failed)}", file=sys.stderr)

    def _drop_tag(self, run_id: str, key: str) -> None:
        if key in self.client.get_run(run_id).data.tags:
            self.client.delete_tag(run_id, key)

    def history(self, key: str, run_id: str | None = None) -> list[tuple[int, float]]:
        """(step, value) pairs of one metric, sorted by step."""
        rid = self._rid(run_id)
        try:
            rows = self.client.get_metric_history(rid, key)
        except MlflowException as exc:
            raise TrackingError(f"MLflow run {rid} not found on {self.uri}: {exc}") from exc
        return [(m.step, m.value) for m in sorted(rows, key=lambda m: (m.step, m.timestamp))]

    def __enter__(self) -> Tracker:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool:
        if exc is None:
            self.end("FINISHED")
        else:
            status = "KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED"
            try:
                self.end(status, exc)
            except Exception:  # never mask the original exception
                pass
        return False


def _git(*args: str) -> str | None:
    """Output of a git command in this file's checkout, or None."""
    try:
        out = subprocess.run(
            ["git", *args], cwd=Path(__file__).resolve().parent, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def _version(dist: str) -> str:
    """Installed version of a distribution, or 'missing'."""
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "missing"


def run_tags(backend: str, device: str) -> dict[str, str]:
    """Run tags: git SHA (+"-dirty"), library versions, python, device, array backend, hostname."""
    sha = _git("rev-parse", "HEAD") or "unknown"
    if sha != "unknown" and _git("status", "--porcelain"):
        sha += "-dirty"
    tags = {"git_sha": sha, "python_version": platform.python_version(), "device": device, "array_backend": backend}
    tags.update({f"{dist}_version": _version(dist) for dist in VERSIONED})
    tags["hostname"] = socket.gethostname()
    return tags


def default_tracking_uri(root: str | Path | None = None) -> str:
    """sqlite URI of root/mlflow.db, absolute (relative roots live under `POSISP_HOME`, else the CWD).

    Without a root, `MLFLOW_TRACKING_URI` wins when set (MLflow's own convention, handy for Ray jobs), else
    the store is `.posisp/mlflow/mlflow.db`.
    """
    if root is None:
        env_uri = os.environ.get("MLFLOW_TRACKING_URI", "").strip()
        if env_uri:
            return env_uri
        root = ".posisp/mlflow"
    return "sqlite:///" + str(resolve(Path(root) / "mlflow.db"))
