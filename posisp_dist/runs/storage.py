"""Where a run's state lives, shared by training, eval, apply and the benchmarks: the driver's state, the
run's local checkpoints (newest N plus the best on val), and the MLflow run that holds the uploaded ones.

It sits below the driver, `trained.evaluate` and `trained.report`, so none of them needs another to find a run.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from posisp_dist.config import Config
from posisp_dist.paths import resolve
from posisp_dist.runs.counters import Counters
from posisp_dist.runs.tracking import Tracker, TrackingError, default_tracking_uri, sqlite_path

STATE_FILE = "driver_state.json"
LAST_CKPT_TAG = "posisp.last_checkpoint"
BEST_CKPT_TAG = "posisp.best_checkpoint"


@dataclass
class DriverState(Counters):
    """What the driver knows after an iteration: its counters (`Counters`), saved in every checkpoint."""

    iteration: int = 0
    env_steps: int = 0
    train_seconds: float = 0.0
    env_runner_restarts: int = 0
    last_metrics: dict[str, float] = field(default_factory=dict)
    events: list[dict[str, Any]] = field(default_factory=list)  # restarts and resumes, also in events.jsonl
    best_val: float | None = None  # `train.val_every`: the best greedy val primary metric so far, and its iteration
    best_iteration: int = 0


def resolve_paths(cfg: Config) -> Config:
    """Absolute data, model and output paths (relative ones under POSISP_HOME), so Ray workers with another
    cwd find them and a Ray job's temporary working_dir does not swallow them."""
    raw = cfg.model_dump(mode="json")
    raw["data"]["root"] = str(resolve(cfg.data.root))
    raw["task"]["cache_dir"] = str(resolve(cfg.task.cache_dir))
    raw["train"]["out_dir"] = str(resolve(cfg.train.out_dir))
    return Config.model_validate(raw)


def open_tracker(cfg: Config, uri: str | None = None, existing_run: str | None = None) -> Tracker:
    """The tracker of `uri` (else the config's, else the default store); with `existing_run`, a sqlite store
    that does not exist yet is an error naming the run instead of a new empty store."""
    t = cfg.tracking
    uri = uri or t.uri or default_tracking_uri()
    db = sqlite_path(uri)
    if existing_run and db is not None and not db.exists():
        raise TrackingError(f"no MLflow store at {db}, so run {existing_run} is not there; pass --tracking-uri "
                            "with the store the run was logged to")
    return Tracker(uri, t.experiment, t.artifact_root)


class Checkpoints:
    """Local checkpoints of one run (`<out_dir>/<run_id>/checkpoints/iter_NNNNNN`), newest kept."""

    def __init__(self, root: Path, keep: int) -> None:
        self.root, self.keep = root, keep
        root.mkdir(parents=True, exist_ok=True)

    def save(self, algo: Any, state: DriverState) -> Path:
        final = self.root / f"iter_{state.iteration:06d}"
        tmp = self.root / f".tmp_{state.iteration:06d}"
        shutil.rmtree(tmp, ignore_errors=True)
        algo.save_to_path(str(tmp))
        self.write_state(tmp, state)
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)  # a killed driver never leaves a half-written checkpoint under a final name
        for old in sorted(self.root.glob("iter_*"))[: -self.keep]:
            shutil.rmtree(old, ignore_errors=True)
        return final

    def latest(self) -> Path | None:
        found = sorted(self.root.glob("iter_*"))
        return found[-1] if found else None

    def write_state(self, ckpt: Path, state: DriverState) -> None:
        (ckpt / STATE_FILE).write_text(json.dumps(asdict(state)))

    def keep_best(self, ckpt: Path) -> Path:
        """Copy `ckpt` to `best/` (replaced atomically), out of reach of the newest-N rotation."""
        tmp, best = self.root / ".tmp_best", self.root / "best"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(ckpt, tmp)
        shutil.rmtree(best, ignore_errors=True)
        tmp.rename(best)
        return best

    def best(self) -> Path | None:
        return self.root / "best" if (self.root / "best").exists() else None


def read_state(ckpt: Path) -> DriverState:
    raw = json.loads((ckpt / STATE_FILE).read_text())
    if "best_val_map" in raw:  # checkpoints written before the task declared its own metrics
        raw["best_val"] = raw.pop("best_val_map")
    if "episodes" in raw:  # checkpoints written before the counters had one name each
        raw["images"] = raw.pop("episodes")
    raw.setdefault("distinct_images", raw.get("images", 0))  # written before K pipelines per image existed
    return DriverState(**raw)


def selection_key(cfg: Config) -> str:
    """The MLflow key of the greedy val score at each selection point: `eval/val_<primary metric>_selection`."""
    from posisp_dist.tasks import task_metrics

    return f"eval/val_{task_metrics(cfg.task)[0].key}_selection"


def find_resume_checkpoint(tracker: Tracker, local: Checkpoints, run_id: str | None = None) -> Path | None:
    """The newest checkpoint of the run: local if present, else the last one uploaded to MLflow."""
    candidates = [p for p in [local.latest()] if p is not None]
    tag = tracker.get_run(run_id).data.tags.get(LAST_CKPT_TAG)
    if tag:
        remote_iter = int(tag.rsplit("_", 1)[-1])
        if not candidates or read_state(candidates[0]).iteration < remote_iter:
            dst = local.root.parent / "downloaded"
            shutil.rmtree(dst, ignore_errors=True)
            candidates = [tracker.download_artifacts(tag, dst, run_id=run_id)]
    return candidates[0] if candidates else None


def fetch_run(run_id: str, tracking_uri: str | None = None) -> tuple[Config, Path, Tracker]:
    """A finished (or interrupted) run's resolved config and checkpoint for eval and apply: the best on val
    when the run selected one (`train.val_every`), else the newest."""
    tracker = open_tracker(Config(), tracking_uri, existing_run=run_id)
    run = tracker.get_run(run_id)  # raises TrackingError naming an unknown run
    cfg = Config.model_validate(json.loads(download_text(tracker, run_id, "config.json")))
    local = Checkpoints(Path(cfg.train.out_dir) / run_id / "checkpoints", cfg.train.keep_checkpoints)
    best_tag = run.data.tags.get(BEST_CKPT_TAG)
    restore_best(tracker, local, run_id, best_tag)
    ckpt = (local.best() if best_tag else None) or find_resume_checkpoint(tracker, local, run_id)
    if ckpt is None:
        raise FileNotFoundError(f"run {run_id} has no checkpoint yet (it failed before its first iteration)")
    return cfg, ckpt, tracker


def restore_best(tracker: Tracker, local: Checkpoints, run_id: str, best_tag: str | None) -> Path | None:
    """The run's best-on-val checkpoint locally: kept here, or (selected on another machine, or deleted here)
    fetched from the run's uploaded `best_tag`; None when the run has none."""
    if local.best() is None and best_tag:
        shutil.rmtree(local.root / ".download_best", ignore_errors=True)
        tracker.download_artifacts(best_tag, local.root / ".download_best", run_id=run_id)
        (local.root / ".download_best" / Path(best_tag).name).rename(local.root / "best")
    return local.best()


def download_text(tracker: Tracker, run_id: str, path: str) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        return Path(tracker.download_artifacts(path, tmp, run_id=run_id)).read_text()


def upload_checkpoint(tracker: Tracker, ckpt: Path) -> str:
    tracker.log_artifact(ckpt, f"checkpoints/{ckpt.name}")
    tracker.set_tags({LAST_CKPT_TAG: f"checkpoints/{ckpt.name}"})
    return ckpt.name
