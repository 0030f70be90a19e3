"""Cache keys that name everything a cached score depends on, so a hit is always the right value.

A reference score depends on the image (dataset fingerprint, split, image id), the input-RAW rendering
and the task model (its weights and score settings, `TaskModel.fingerprint()`). An eval result adds the
checkpoint's policy weights and the config sections that shape the greedy rollout. The code that makes
these values is part of every key as well (a hash of the sources in `SCORE_SOURCES`), so that a changed
module, renderer or score never reads a value computed by older code from a long-lived shared Redis.
"""

from __future__ import annotations

import hashlib
import inspect
from functools import lru_cache
from pathlib import Path
from typing import Any

from posisp_dist.data.shards import fingerprint

PACKAGE = Path(__file__).resolve().parents[1]
# The code a cached score or eval row comes from: data, ISP, task models, policy, envs and the eval path.
# (The CLI, driver, tracking and config code are left out, so that editing them keeps the cache warm.)
SCORE_SOURCES = (
    "data",
    "isp",
    "tasks",
    "policy",
    "baselines/table.py",
    "trained",
    "../envs",
)


@lru_cache(maxsize=1)
def code_fingerprint() -> str:
    """Hash of the Python sources that make scores and eval rows (computed once per process, at first use)."""
    h = hashlib.sha256()
    for name in SCORE_SOURCES:
        root = (PACKAGE / name).resolve()
        for path in sorted(root.rglob("*.py")) if root.is_dir() else [root]:
            h.update(str(path.relative_to(PACKAGE.parent)).encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def source_fingerprint(obj: Any) -> str:
    """Hash of the source file that defines `obj`'s class: a task model's code, a plugin's included (the package's
    own sources are in `code_fingerprint` as well; a plugin's file is not)."""
    try:
        path = inspect.getsourcefile(type(obj))
    except TypeError:  # a class defined in C or without a file
        path = None
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16] if path else "no-source"


def task_fingerprint(task: Any) -> str | None:
    """The task model's own fingerprint (weights + score settings) and its code, or None when it has no
    fingerprint (no caching)."""
    fn = getattr(task, "fingerprint", None)
    own = fn() if callable(fn) else None
    return None if own is None else f"{own}-{source_fingerprint(task)}"


def reference_namespace(dataset_fingerprint: str, split: str, task: Any) -> str | None:
    """Namespace of the input-RAW reference scores of one split under one task model; None: do not cache."""
    task_fp = task_fingerprint(task)
    if task_fp is None:
        return None
    parts = {"data": dataset_fingerprint, "split": split, "task": task_fp, "code": code_fingerprint()}
    return "ref:" + fingerprint({**parts, "rendering": "input_raw"})


def checkpoint_fingerprint(checkpoint: str | Path, subdir: str | Path = ".") -> str:
    """Hash of the files (names and bytes) under checkpoint/subdir, e.g. the policy module's weights."""
    root = Path(checkpoint) / subdir
    files = sorted(p for p in root.rglob("*") if p.is_file())
    if not files:
        raise FileNotFoundError(f"nothing to fingerprint under {root}")
    h = hashlib.sha256()
    for p in files:
        h.update(str(p.relative_to(root)).encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def eval_key(what: str, dataset_fingerprint: str, split: str, task: Any, **parts: Any) -> str | None:
    """Key of one eval result (`what`: baselines | policy); None when the task model cannot be keyed."""
    task_fp = task_fingerprint(task)
    if task_fp is None:
        return None
    common = {"data": dataset_fingerprint, "split": split, "task": task_fp, "code": code_fingerprint()}
    return f"eval:{what}:" + fingerprint({**common, **parts})
