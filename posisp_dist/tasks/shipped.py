"""Trained built-in task models shipped inside the package, so the README's first command skips the one-off
training (about 8 of its minutes on 2 CPU cores).

A shipped file is used only where training would have produced it: its name is the cache file's name (the data
config, the seed and the training settings, `detector.detector_path`), and `MANIFEST.json` records the SHA-256
of the file and of the training split it was trained on (the clean renders and their annotations, as read). Any
mismatch (another data config or seed, data generated differently by other library versions, a damaged file)
and the model is trained here as before. `posisp seeds` still trains one per seed: only the default config's
seed 0 is shipped.

Reproduce (trains from scratch, ignoring every cache, and writes or checks the shipped file):
    python3 -m posisp_dist.tasks.shipped --config configs/quick.yaml [--check]
"""

from __future__ import annotations

import argparse
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
COMMAND = "python3 -m posisp_dist.tasks.shipped --config configs/quick.yaml"


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


def main(argv: list[str] | None = None) -> int:
    from posisp_dist.config import load_config
    from posisp_dist.data.build import build_dataset

    ap = argparse.ArgumentParser(description="train the config's built-in task model from scratch and ship it")
    ap.add_argument("--config", required=True)
    ap.add_argument("--check", action="store_true", help="compare with the shipped file instead of writing it")
    args = ap.parse_args(argv)
    cfg = load_config(args.config)
    cls = MODEL_CLASSES[cfg.task.kind]
    build_dataset(cfg.data, cfg.seed, progress=False)
    train = RawDataset(cfg.data.root, "train")
    name = detector_path(cfg.task, train, cls).name
    net, info = train_detector(cfg.task, train, progress=True, cls=cls)
    if args.check:
        scratch = SHIPPED_DIR / f"{name}.check"
        torch.save(net.state_dict(), scratch)
        same = _sha256_file(scratch) == _manifest().get(name, {}).get("sha256")
        scratch.unlink()
        print(f"{name}: {'identical to' if same else 'DIFFERS from'} the shipped file")
        return 0 if same else 1
    info = {"train_seconds": round(info["train_seconds"], 1), "final_loss": info["final_loss"],
            "classes": train.classes}
    out = ship(name, net.state_dict(), train, info)
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
