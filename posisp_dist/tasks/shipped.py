"""Trained built-in task models shipped inside the package, so the README's first command skips the one-off
training (about 4.5 minutes on 2 CPU cores).

A shipped file is used only where training would have produced it: its name is the cache file's name (the data
config, the seed and the training settings, `detector.detector_path`), and `MANIFEST.json` records the SHA-256
of the file and of the training split it was trained on (the clean renders and their annotations, as read). Any
mismatch (another data config or seed, data generated differently by other library versions, a damaged file)
and the model is trained here as before. `posisp seeds` still trains one per seed: only the default config's
seed 0 is shipped.

Reproduce (trains from scratch, ignoring every cache, and writes or checks the shipped file):
    posisp task ship --config configs/quick.yaml [--check]
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from posisp_dist.data.shards import RawDataset
from posisp_dist.tasks.detector import BuiltinDetector, detector_path, train_detector
from posisp_dist.tasks.segmenter import BuiltinSegmenter

MODEL_CLASSES: dict[str, type[BuiltinDetector]] = {"builtin_detector": BuiltinDetector,
                                                   "builtin_segmenter": BuiltinSegmenter}
SHIPPED_DIR = Path(__file__).parent / "weights"
MANIFEST = SHIPPED_DIR / "MANIFEST.json"
COMMAND = "posisp task ship --config configs/quick.yaml"


def _sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def training_data_sha256(train: RawDataset) -> str:
    """SHA-256 of what the built-in models train on: every clean render and its boxes, labels and instance maps."""
    batch = train.load()
    h = hashlib.sha256()
    for part in (batch.ids, batch.srgb, *batch.boxes, *batch.labels, *batch.instances):
        a = np.ascontiguousarray(part)
        h.update(f"{a.dtype}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def _manifest() -> dict[str, Any]:
    return json.loads(MANIFEST.read_text()) if MANIFEST.exists() else {}


def shipped_for(path: Path, train: RawDataset) -> Path | None:
    """The shipped file that equals what training `path` on `train` would give, or None."""
    entry = _manifest().get(path.name)
    candidate = SHIPPED_DIR / path.name
    if entry is None or not candidate.exists():
        return None
    if _sha256_file(candidate) != entry["sha256"] or training_data_sha256(train) != entry["train_data_sha256"]:
        return None
    return candidate


def install_shipped(cfg: Any, data_root: str | Path, cls: type[BuiltinDetector]) -> bool:
    """Put the matching shipped model in the cache (atomically, with its `.json`) where the cache has none yet;
    True if it did. `cfg` is the task config."""
    train = RawDataset(data_root, "train")
    path = detector_path(cfg, train, cls)
    if path.exists():
        return False
    found = shipped_for(path, train)
    if found is None:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    shutil.copyfile(found, tmp)
    tmp.replace(path)
    info = {**_manifest()[path.name]["info"], "source": f"shipped with posisp-dist ({COMMAND})"}
    path.with_suffix(".json").write_text(json.dumps(info, indent=2))
    return True


def ship(name: str, state: dict[str, Any], train: RawDataset, info: dict[str, Any]) -> Path:
    """Write `state` (a trained model's state dict, trained on `train`) as the shipped file `name` and record it."""
    out = SHIPPED_DIR / name
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, out)
    entry = {"sha256": _sha256_file(out), "train_data_sha256": training_data_sha256(train), "info": info,
             "command": COMMAND, "torch": torch.__version__}
    MANIFEST.write_text(json.dumps({**_manifest(), name: entry}, indent=2, sort_keys=True) + "\n")
    return out


def retrain(cfg: Any, train: RawDataset, check: bool = False) -> tuple[Path, bool]:
    """Train task config `cfg`'s built-in model from scratch on `train` (no cache, nothing shipped is used). With
    `check`, compare it with the shipped file -> (that file, identical?); else ship it -> (the new file, True)."""
    if cfg.kind not in MODEL_CLASSES:
        raise ValueError(f"only the built-in task models ship with the package ({', '.join(MODEL_CLASSES)}); "
                         f"task.kind is {cfg.kind!r}")
    cls = MODEL_CLASSES[cfg.kind]
    name = detector_path(cfg, train, cls).name
    net, info = train_detector(cfg, train, progress=True, cls=cls)
    if check:  # the weights, tensor by tensor (a file's bytes also hold its own name: torch.save's archive)
        found = SHIPPED_DIR / name
        if not found.exists():
            return found, False
        shipped = torch.load(found, map_location="cpu", weights_only=True)
        state = net.state_dict()
        same = shipped.keys() == state.keys() and all(torch.equal(shipped[k], state[k]) for k in state)
        return found, same
    info = {"train_seconds": round(info["train_seconds"], 1), "final_loss": info["final_loss"],
            "classes": train.classes}
    return ship(name, net.state_dict(), train, info), True
