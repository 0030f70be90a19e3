"""Writing a dataset root safely: only ever replace what is ours, and only once the new one is complete.

A dataset (built or ingested) is written into a temporary sibling of its root and renamed into place when it
is whole, so a failure at any point leaves the previous dataset as it was. A root is replaced only when it is
absent, empty, or carries our own manifest; anything else (a user's folder, the working directory, a file) is
refused by name and left untouched.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def holds_dataset(root: Path) -> bool:
    """Does `root` carry a posisp manifest (a dataset this project wrote)?"""
    try:
        manifest = json.loads((root / "manifest.json").read_text())
    except (OSError, ValueError):
        return False
    ours = isinstance(manifest, dict) and manifest.get("source") in ("builtin", "ingested")
    return ours and "fingerprint" in manifest


def check_replaceable(root: Path) -> None:
    """ValueError naming the cause unless `root` may be (re)written: absent, an empty folder, or ours."""
    if root.exists() and not root.is_dir():
        raise ValueError(f"data root {root} is a file, not a folder; point it at a new or empty folder")
    if root.is_dir() and any(root.iterdir()) and not holds_dataset(root):
        raise ValueError(f"data root {root} is not empty and holds no posisp dataset (no manifest.json of ours); "
                         "nothing there is touched: point it at a new or empty folder")


@contextmanager
def staged_root(root: str | Path) -> Iterator[Path]:
    """Yield a fresh temporary sibling of `root` to write the dataset into; on a normal exit it replaces `root`
    (checked replaceable first), on an exception it is removed and `root` is untouched."""
    root = Path(root).absolute()
    check_replaceable(root)
    tag = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
    staging = root.parent / f".{root.name}.partial-{tag}"
    try:
        staging.mkdir(parents=True)
    except OSError as e:
        raise ValueError(f"cannot write the dataset beside {root}: {e.strerror or e}") from None
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    check_replaceable(root)  # again: someone may have written there meanwhile
    old = root.parent / f".{root.name}.old-{tag}"
    if root.exists():
        root.rename(old)
    staging.rename(root)
    shutil.rmtree(old, ignore_errors=True)
