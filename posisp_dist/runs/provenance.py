"""What a run trained on, recorded with the run and checked wherever the run is used again.

Training tags the run with the fingerprint of the data under `data.root` and of the frozen task model (its
weights, settings and code). `posisp train --resume` and `posisp eval` compare them with what is there now, so
a root rebuilt with another seed (as `posisp seeds` does for every seed) is never silently trained on or
evaluated on in the run's name, and a task model is never silently retrained. (`posisp apply` reads neither:
it runs the policy on the user's raw files.)
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from posisp_dist.config import Config

DATA_TAG = "posisp.data_fingerprint"
TASK_TAG = "posisp.task_fingerprint"


def data_fingerprint(cfg: Config) -> str | None:
    """The fingerprint of the dataset under `cfg.data.root` now, or None when there is none."""
    from posisp_dist.data.shards import RawDataset

    try:
        return RawDataset(cfg.data.root, "train").fingerprint
    except (FileNotFoundError, KeyError, ValueError):
        return None


def provenance_tags(cfg: Config, task: Any) -> dict[str, str]:
    from posisp_dist.cache.keys import task_fingerprint

    return {DATA_TAG: str(data_fingerprint(cfg)), TASK_TAG: str(task_fingerprint(task))}


def check_data(cfg: Config, run_id: str, tags: dict[str, str], rebuild: bool = False) -> None:
    """ValueError naming the run and both fingerprints when `data.root` holds other data than the run's; with
    `rebuild`, built-in data is regenerated there instead (deterministic given the run's seed)."""
    recorded = tags.get(DATA_TAG)
    if recorded is None:
        print(f"posisp: warning: run {run_id} records no data fingerprint (an older run); using what "
              f"{cfg.data.root} holds now", file=sys.stderr)
        return
    now = data_fingerprint(cfg)
    if now == recorded:
        return
    if rebuild and cfg.data.source == "builtin":
        from posisp_dist.data.build import build_dataset

        print(f"posisp: regenerating run {run_id}'s built-in data (seed {cfg.seed}) under {cfg.data.root}",
              file=sys.stderr)
        build_dataset(cfg.data, cfg.seed, force=True, progress=False)
        if data_fingerprint(cfg) == recorded:
            return
    how = ("pass --rebuild-data to regenerate it there (built-in data, deterministic given the run's seed)"
           if cfg.data.source == "builtin" and not rebuild else "restore that dataset under data.root")
    raise ValueError(f"run {run_id} trained on data {recorded}, but {cfg.data.root} now holds "
                     f"{now or 'no dataset'}; {how}")


def check_task(run_id: str, tags: dict[str, str], task: Any) -> None:
    """ValueError when the task model built now is not the one the run trained with."""
    from posisp_dist.cache.keys import task_fingerprint

    recorded, now = tags.get(TASK_TAG), str(task_fingerprint(task))
    if recorded is not None and recorded != now:
        raise ValueError(f"run {run_id} trained with task model {recorded}, but the one built now is {now} (other "
                         "weights, settings or code); evaluate with the run's task model")


def announce_retraining(cfg: Config) -> None:
    """One line when building the task model will train it (its cached weights are missing)."""
    from posisp_dist.tasks import task_weights_path

    path = task_weights_path(cfg.task, cfg.data.root)
    if path is not None and not Path(path).exists() and not getattr(cfg.task, "weights", None):
        print(f"posisp: the task model's weights {path} are missing: training it again (deterministic given "
              "task.train.seed; checked against the run's task model afterwards)", file=sys.stderr)
