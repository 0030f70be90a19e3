"""One learned method's run as the experiments use it: train, evaluate on a held-out split, read its val curve.

`posisp seeds` and `posisp compare` are thin layers over `run_method`: what they add is which configs to run
(seeds; methods and budgets) and the rows they keep of each `RunResult`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from posisp_dist.config import Config
from posisp_dist.runs.counters import Counters
from posisp_dist.runs.storage import open_tracker, selection_key
from posisp_dist.runs.tracking import Tracker
from posisp_dist.train.driver import train
from posisp_dist.trained.evaluate import evaluate_run


@dataclass(frozen=True)
class RunResult:
    """A trained and evaluated run of one config."""

    cfg: Config
    run_id: str
    tracking_uri: str
    checkpoint: str
    metrics: list[dict[str, Any]]  # the task's metrics, primary first (as in an eval payload)
    scores: dict[str, float]  # the learned policy's metrics on the evaluated split
    baselines: list[dict[str, Any]]  # the baselines' eval rows (empty unless asked for)
    counters: dict[str, int]  # the compute spent in training (`Counters`)
    iterations: int
    train_seconds: float
    wall_seconds: float
    curve: list[dict[str, float]]  # the primary metric greedy on val at each selection point (`val_curve`)

    def row(self, method: str, seed: int) -> dict[str, Any]:
        """The run as one row of a results table (scores, compute, times, val curve)."""
        return {
            "method": method, "seed": seed, "run_id": self.run_id, **self.scores, **self.counters,
            "iterations": self.iterations, "train_seconds": self.train_seconds, "wall_seconds": self.wall_seconds,
            "curve": self.curve,
        }


def run_method(
    cfg: Config, split: str = "test", *, parent_run_id: str | None = None, progress: bool = True,
    baselines: bool = True,
) -> RunResult:
    """Train `cfg` (nested under `parent_run_id` if given), then score its kept policy on `split` (with the
    baselines' rows when `baselines`)."""
    t0 = time.perf_counter()
    summary = train(cfg, progress=progress, parent_run_id=parent_run_id)
    wall = time.perf_counter() - t0
    payload = evaluate_run(summary["run_id"], split, summary["tracking_uri"], False, baselines)
    metrics, rows = payload["metrics"], payload["rows"]
    tracker = open_tracker(cfg, summary["tracking_uri"])
    return RunResult(
        cfg=cfg, run_id=summary["run_id"], tracking_uri=summary["tracking_uri"], checkpoint=summary["checkpoint"],
        metrics=metrics, scores={m["key"]: rows[-1][m["key"]] for m in metrics}, baselines=rows[:-1],
        counters={name: summary[name] for name in Counters.names()}, iterations=summary["iterations"],
        train_seconds=summary["train_seconds"], wall_seconds=round(wall, 1),
        curve=val_curve(tracker, summary["run_id"], selection_key(cfg)),
    )


def val_curve(tracker: Tracker, run_id: str, key: str) -> list[dict[str, float]]:
    """The primary metric, greedy on val (MLflow `key`), at every selection point of a run, with the training
    compute spent until then (every `Counters` counter), joined on the env step."""
    import numpy as np

    counters = {name: dict(tracker.history(Counters.metric(name), run_id)) for name in Counters.names()}
    return [
        {"env_steps": step, "val": value, **{name: float(c.get(step, np.nan)) for name, c in counters.items()}}
        for step, value in tracker.history(key, run_id)
    ]
