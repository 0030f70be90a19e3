"""Does the training signal track the metric *on policy outputs*? For every checkpoint a run uploaded, the
greedy policy's pipelines on the val split are scored with each per-image signal of the built-in detector
(loss, detection, mixed, ap: all from one forward pass) and with the dataset metric (COCO mAP@.5:.95). The
Spearman rank correlation between each signal's val mean and val mAP, across the checkpoints of the given
runs, says whether a signal can rise while mAP falls (the way the `mixed` reward was gamed).

    posisp bench signal --runs RUN [RUN ...] --json out.json
"""

from __future__ import annotations

import shlex
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

SIGNALS = ("loss", "detection", "mixed", "ap")


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rho (average ranks for ties)."""
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic)


def checkpoint_rows(run_id: str, tracking_uri: str | None = None) -> list[dict[str, Any]]:
    """One row per uploaded checkpoint of the run: iteration, val mAP and the val mean of every signal."""
    from envs.factory import CoreSource
    from posisp_dist.runs.storage import fetch_run
    from posisp_dist.tasks.detector import BuiltinDetector
    from posisp_dist.trained.inference import greedy_on_split

    cfg, _, tracker = fetch_run(run_id, tracking_uri)
    core = CoreSource(cfg, "val").get()
    task = core.task
    if not isinstance(task, BuiltinDetector):
        raise TypeError(f"run {run_id}: the signals compared here are the built-in detector's, not {type(task)}")
    names = sorted(a.path for a in tracker.client.list_artifacts(run_id, "checkpoints") if "iter_" in a.path)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            ckpt = tracker.download_artifacts(name, Path(tmp) / Path(name).name, run_id=run_id)
            res = greedy_on_split(cfg, ckpt, "val", core)
            row = {"run_id": run_id, "iteration": int(name.rsplit("_", 1)[-1]), "map": float(res["map"])}
            for signal in SIGNALS:
                task.signal = signal
                row[signal] = float(np.mean(task.score(res["outputs"], core.targets)))
            task.signal = cfg.task.signal
            rows.append(row)
    return rows


def run(run_ids: list[str], tracking_uri: str | None = None) -> dict[str, Any]:
    return summarise(run_ids, [r for rid in run_ids for r in checkpoint_rows(rid, tracking_uri)])


def summarise(run_ids: list[str], rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Spearman's rho of each signal's val mean with val mAP: across all the checkpoints, and within each run
    (the harder test: a signal that rises while one run's mAP falls shows up there)."""

    def rho(subset: list[dict[str, Any]]) -> dict[str, float]:
        maps = np.array([r["map"] for r in subset])
        return {s: spearman(np.array([r[s] for r in subset]), maps) for s in SIGNALS}

    return {
        "command": shlex.join(["posisp", *sys.argv[1:]]),
        "runs": run_ids, "rows": rows, "n_checkpoints": len(rows), "spearman_vs_val_map": rho(rows),
        "spearman_within_run": {rid: rho([r for r in rows if r["run_id"] == rid]) for rid in run_ids},
    }
