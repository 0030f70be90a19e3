"""Readers for real data: DNG/raw files through rawpy (LibRaw) and COCO-style JSON annotations."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from posisp_dist.data.unprocess import xyz2cam_to_cam2rgb
from posisp_dist.isp.raw import CFA_PATTERNS, check_bayer


@dataclass(frozen=True)
class RawImage:
    """One raw capture read from disk."""

    bayer: np.ndarray  # (H, W) uint16 sensor counts, H and W even
    black_level: float
    white_level: float
    cfa: str
    cam2rgb: np.ndarray  # (3, 3)
    wb_gains: np.ndarray  # (3,) as-shot gains, green = 1


def read_dng(path: str | Path) -> RawImage:
    """Read a DNG (or any LibRaw-supported raw) into a `RawImage`; clear errors for corrupt or odd files."""
    import rawpy

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"raw file not found: {path}")
    try:
        with rawpy.imread(str(path)) as r:
            bayer = np.array(r.raw_image_visible, dtype=np.uint16)
            desc = r.color_desc.decode()
            pattern = np.asarray(r.raw_pattern)
            black = float(np.mean(r.black_level_per_channel))
            white = float(r.white_level)
            xyz2cam = np.asarray(r.rgb_xyz_matrix, np.float64)[:3]
            wb = np.asarray(r.camera_whitebalance, np.float64)[:3]
    except rawpy.LibRawError as e:  # LibRawFileUnsupportedError, LibRawIOError, LibRawDataError, ...
        raise ValueError(f"{path}: corrupt or unsupported raw file ({type(e).__name__}: {e})") from None
    if pattern.shape != (2, 2):
        raise ValueError(f"{path}: only 2x2 Bayer sensors are supported, got a CFA of shape {pattern.shape}")
    cfa = "".join(desc[int(i)] for i in pattern.reshape(-1)).replace("g", "G")
    if cfa not in CFA_PATTERNS:
        raise ValueError(f"{path}: unsupported CFA pattern {cfa!r}")
    h, w = bayer.shape
    bayer = bayer[: h - h % 2, : w - w % 2]  # keep whole 2x2 cells
    check_bayer(bayer, batched=False)
    if not white > black:
        raise ValueError(f"{path}: white level {white} is not above black level {black}")
    cam2rgb = xyz2cam_to_cam2rgb(xyz2cam) if np.abs(xyz2cam).sum() > 0 else np.eye(3)
    wb = wb / wb[1] if wb[1] > 0 else np.ones(3)
    return RawImage(bayer, black, white, cfa, cam2rgb.astype(np.float32), wb.astype(np.float32))


def read_coco(path: str | Path) -> tuple[list[str], dict[str, dict[str, np.ndarray]]]:
    """COCO-style detection JSON -> (class names, {file_name: {boxes x0y0x1y1, labels 0..C-1}})."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"annotation file not found: {path}") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise ValueError(f"{path}: COCO annotations need a list under {key!r}")
    cats = sorted(data["categories"], key=lambda c: c["id"])
    cat_index = {c["id"]: i for i, c in enumerate(cats)}
    names = {im["id"]: im["file_name"] for im in data["images"]}
    out: dict[str, dict[str, list]] = {n: {"boxes": [], "labels": []} for n in names.values()}
    for a in data["annotations"]:
        if a.get("image_id") not in names:
            raise ValueError(f"{path}: annotation {a.get('id')} refers to unknown image_id {a.get('image_id')}")
        if a.get("category_id") not in cat_index:
            raise ValueError(f"{path}: annotation {a.get('id')} has unknown category_id {a.get('category_id')}")
        x, y, w, h = (float(v) for v in a["bbox"])
        if w <= 0 or h <= 0:
            raise ValueError(f"{path}: annotation {a.get('id')} has an empty box {a['bbox']}")
        entry = out[names[a["image_id"]]]
        entry["boxes"].append([x, y, x + w, y + h])
        entry["labels"].append(cat_index[a["category_id"]])
    targets = {
        k: {"boxes": np.asarray(v["boxes"], np.float32).reshape(-1, 4), "labels": np.asarray(v["labels"], np.int64)}
        for k, v in out.items()
    }
    return [str(c["name"]) for c in cats], targets
