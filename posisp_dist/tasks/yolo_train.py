"""Training a YOLO from scratch on the built-in clean renders with ultralytics' own trainer.

No pretrained weights can be fetched here, so `task.train` of an ultralytics kind without `weights` trains
one: the train and val splits' clean sRGB renders are exported in ultralytics' YOLO format (PNG images,
one label file per image: `class cx cy w h` for detection, `class x1 y1 x2 y2 ...` polygons traced from the
instance maps for segmentation), and `YOLO(<model>.yaml).train(...)` runs in a child process, so that the
trainer's process-wide settings (deterministic algorithms, seeds, thread counts) never reach the caller.
The weights are cached by fingerprint (data, training settings, library version) like the built-in detector.

    python -m posisp_dist.tasks.yolo_train <job.json>     # what the cache runs on a miss
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from posisp_dist.data.shards import RawDataset, fingerprint

FORMAT_VERSION = 1


def _polygon(mask: np.ndarray) -> list[float]:
    """The outline of one instance mask as a flat x, y pixel list (its parts joined, as ultralytics joins them)."""
    import cv2
    from ultralytics.data.converter import merge_multi_segment

    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    parts = [c.reshape(-1, 2).astype(np.float32) for c in contours if len(c) >= 3]
    if not parts:
        return []
    if len(parts) > 1:
        parts = [np.concatenate(merge_multi_segment([p.reshape(-1).tolist() for p in parts]), 0)]
    return parts[0].reshape(-1).tolist()


def label_lines(target: dict[str, np.ndarray], hw: tuple[int, int], segments: bool) -> list[str]:
    """One image's YOLO label lines, coordinates normalised to [0, 1]. A segment line needs visible pixels:
    an object hidden entirely by the others is left out of the segmentation labels."""
    h, w = hw
    lines = []
    for k, (box, label) in enumerate(zip(target["boxes"], target["labels"], strict=True)):
        if segments:
            xy = _polygon(target["instances"] == k + 1)
            if len(xy) >= 6:
                norm = np.asarray(xy).reshape(-1, 2) / [w, h]
                lines.append(f"{int(label)} " + " ".join(f"{v:.6f}" for v in norm.reshape(-1)))
            continue
        x0, y0, x1, y1 = (float(v) for v in box)
        lines.append(f"{int(label)} {(x0 + x1) / 2 / w:.6f} {(y0 + y1) / 2 / h:.6f} {(x1 - x0) / w:.6f} "
                     f"{(y1 - y0) / h:.6f}")
    return lines


def export_yolo_dataset(data_root: str | Path, out: str | Path, segments: bool) -> Path:
    """The train and val splits' clean renders in YOLO format under `out` -> the dataset YAML's path."""
    from PIL import Image

    out = Path(out)
    classes = RawDataset(data_root, "train").classes
    for split in ("train", "val"):
        batch = RawDataset(data_root, split).load()
        (out / "images" / split).mkdir(parents=True, exist_ok=True)
        (out / "labels" / split).mkdir(parents=True, exist_ok=True)
        for image_id, srgb, target in zip(batch.ids, batch.srgb, batch.targets, strict=True):
            if segments and target["instances"].size == 0:
                raise ValueError(f"{data_root} holds no instance masks: a YOLO-seg model needs shard format 2")
            name = f"{int(image_id):07d}"
            Image.fromarray(srgb).save(out / "images" / split / f"{name}.png")
            lines = label_lines(target, srgb.shape[:2], segments)
            (out / "labels" / split / f"{name}.txt").write_text("\n".join(lines) + ("\n" if lines else ""))
    spec = {"path": str(out.resolve()), "train": "images/train", "val": "images/val",
            "names": dict(enumerate(classes))}
    path = out / "data.yaml"
    path.write_text(json.dumps(spec, indent=1))  # YAML is a superset of JSON
    return path


def yolo_weights_path(cfg: Any, data_root: str | Path) -> Path:
    """Where the trained YOLO of this dataset and `task.train` lives in `task.cache_dir`."""
    from posisp_dist.tasks.yolo_lib import ultralytics

    dataset = RawDataset(data_root, "train")
    key = fingerprint({"data": dataset.fingerprint, "kind": cfg.kind, "train": cfg.train.model_dump(mode="json"),
                       "ultralytics": ultralytics().__version__, "v": FORMAT_VERSION})
    return Path(cfg.cache_dir) / f"{cfg.kind}-{key}.pt"


def train_yolo(cfg: Any, data_root: str | Path, progress: bool = True) -> Path:
    """The cached YOLO for `cfg` (an ultralytics task config with `train`), trained when missing -> its path."""
    path = yolo_weights_path(cfg, data_root)
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="posisp-yolo-", dir=path.parent) as tmp:
        data_yaml = export_yolo_dataset(data_root, Path(tmp) / "data", segments=cfg.kind == "ultralytics_seg")
        job = {"data": str(data_yaml), "project": str(Path(tmp) / "runs"), "segment": cfg.kind == "ultralytics_seg",
               "train": cfg.train.model_dump(mode="json"), "progress": progress}
        (Path(tmp) / "job.json").write_text(json.dumps(job))
        done = subprocess.run([sys.executable, "-m", "posisp_dist.tasks.yolo_train", str(Path(tmp) / "job.json")],
                              capture_output=not progress, text=True)
        if done.returncode != 0:
            tail = (done.stderr or "")[-2000:] if not progress else "(its output is above)"
            raise RuntimeError(f"training the YOLO for {data_root} failed (exit {done.returncode}): {tail}")
        weights = Path(tmp) / "runs" / "train" / "weights" / "last.pt"
        tmp_target = path.with_suffix(".tmp")
        tmp_target.write_bytes(weights.read_bytes())
        tmp_target.replace(path)  # atomic: a killed run never leaves a half-written cache file
        info = json.loads((Path(tmp) / "runs" / "info.json").read_text())
    path.with_suffix(".json").write_text(json.dumps(info, indent=2))
    return path


def model_yaml(train: dict[str, Any], segment: bool, nc: int, out: Path) -> Path:
    """The architecture to train, written to `out`: ultralytics' own `<model>.yaml` for `nc` classes, at the
    config's `scale` (depth, width, max channels) or else the model name's own."""
    from ultralytics.nn.tasks import yaml_model_load

    spec = yaml_model_load(f"{train['model']}{'-seg' if segment else ''}.yaml")
    spec["nc"] = nc
    scale = train.get("scale") or (spec["scales"][spec["scale"]] if spec.get("scales") else None)
    if scale:  # the one scale; a file stem without n/s/m/l/x selects it
        spec["scales"] = {"posisp": list(scale)}
    for key in ("scale", "yaml_file"):
        spec.pop(key, None)
    out.write_text(json.dumps(spec))
    return out


def _run(job: dict[str, Any]) -> None:
    """The child process: train with ultralytics' trainer and write what it measured."""
    import os
    import time
    from contextlib import redirect_stderr, redirect_stdout

    from tqdm import tqdm

    from posisp_dist.tasks.yolo_lib import ultralytics

    lib = ultralytics()
    tc = job["train"]
    names = json.loads(Path(job["data"]).read_text())["names"]
    arch = model_yaml(tc, job["segment"], len(names), Path(job["project"]).parent / "posisp-yolo.yaml")
    model = lib.YOLO(str(arch), task="segment" if job["segment"] else "detect")
    console = os.fdopen(os.dup(2), "w")  # our one progress bar; ultralytics' own bars go to /dev/null
    bar = tqdm(total=tc["epochs"], desc=f"training YOLO{'-seg' if job['segment'] else ''} (ultralytics)",
               disable=not job["progress"], file=console)
    model.add_callback("on_train_epoch_end", lambda trainer: bar.update(1))
    t0 = time.time()
    with open(os.devnull, "w") as null, redirect_stdout(null), redirect_stderr(null):
        model.train(
            data=job["data"], epochs=tc["epochs"], imgsz=tc["imgsz"], batch=tc["batch_size"], lr0=tc["lr"],
            optimizer=tc["optimizer"], cos_lr=True, close_mosaic=tc["close_mosaic"], mosaic=tc["mosaic"],
            seed=tc["seed"], deterministic=True, workers=0, device="cpu", amp=False, plots=False, val=False,
            project=job["project"], name="train", exist_ok=True, verbose=False, cache="ram",
        )
    bar.close()
    info = {"train_seconds": time.time() - t0, "epochs": tc["epochs"], "params": sum(p.numel() for p in
            model.model.parameters()), "ultralytics": lib.__version__}
    (Path(job["project"]) / "info.json").write_text(json.dumps(info))


if __name__ == "__main__":
    _run(json.loads(Path(sys.argv[1]).read_text()))
