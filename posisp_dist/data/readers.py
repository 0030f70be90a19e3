"""Readers for real data: DNG/raw files through rawpy (LibRaw), COCO-style JSON and Pascal VOC XML annotations."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
    render: np.ndarray | None = None  # (h, w, 3) uint8 LibRaw rendering (half size, camera WB), if asked for


def read_dng(path: str | Path, render: bool = False) -> RawImage:
    """Read a DNG (or any LibRaw-supported raw) into a `RawImage`; clear errors for corrupt or odd files.

    With `render`, also LibRaw's own sRGB rendering at half size (camera white balance, no rotation)."""
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
            rgb_cam = np.asarray(r.color_matrix, np.float64)[:3, :3]  # LibRaw's camera -> sRGB
            rendered = r.postprocess(use_camera_wb=True, half_size=True, output_bps=8, user_flip=0) if render else None
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
    if np.abs(xyz2cam).sum() > 0:
        cam2rgb = xyz2cam_to_cam2rgb(xyz2cam)
    else:  # LibRaw leaves the XYZ matrix empty for some DNGs but still derives camera -> sRGB from them
        cam2rgb = rgb_cam if np.abs(rgb_cam).sum() > 0 else np.eye(3)
    wb = wb / wb[1] if wb[1] > 0 else np.ones(3)
    return RawImage(bayer, black, white, cfa, cam2rgb.astype(np.float32), wb.astype(np.float32), rendered)


def _coco_json(path: Path) -> dict[str, Any]:
    """The parsed COCO file; errors name it (missing, a folder, not JSON, not an object at the top level)."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"annotation file not found: {path}") from None
    except IsADirectoryError:
        raise ValueError(f"{path}: is a folder, not a COCO JSON file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a COCO file holds an object at the top level, not a {type(data).__name__}")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise ValueError(f"{path}: COCO annotations need a list under {key!r}")
    return data


def _coco_box(path: Path, a: Any, k: int) -> list[float]:
    """An annotation's finite, non-empty [x, y, w, h]; ValueError naming the file and the annotation."""
    name = f"{path}: annotation {a.get('id', f'#{k}') if isinstance(a, dict) else f'#{k}'}"
    if not isinstance(a, dict):
        raise ValueError(f"{name} is not an object")
    box = a.get("bbox")
    try:
        x, y, w, h = (float(v) for v in box)
    except (TypeError, ValueError):
        raise ValueError(f"{name} needs a 'bbox' of four numbers [x, y, width, height], got {box!r}") from None
    if not all(math.isfinite(v) for v in (x, y, w, h)):
        raise ValueError(f"{name} has a box with a non-finite number {box}")
    if w <= 0 or h <= 0:
        raise ValueError(f"{name} has an empty box {box}")
    return [x, y, w, h]


def read_coco(path: str | Path) -> tuple[list[str], dict[str, dict[str, np.ndarray]]]:
    """COCO-style detection JSON -> (class names, {file_name: {boxes x0y0x1y1, labels 0..C-1}}); every error
    names the file and, where one is at fault, the annotation."""
    path = Path(path)
    data = _coco_json(path)
    try:
        cats = sorted(data["categories"], key=lambda c: c["id"])
        cat_index = {c["id"]: i for i, c in enumerate(cats)}
        names = {im["id"]: im["file_name"] for im in data["images"]}
        cat_names = [str(c["name"]) for c in cats]
    except (KeyError, TypeError) as e:
        raise ValueError(f"{path}: every category needs 'id' and 'name', every image 'id' and 'file_name' "
                         f"(missing {e})") from None
    out: dict[str, dict[str, list]] = {n: {"boxes": [], "labels": []} for n in names.values()}
    for k, a in enumerate(data["annotations"]):
        x, y, w, h = _coco_box(path, a, k)
        if a.get("image_id") not in names:
            raise ValueError(f"{path}: annotation {a.get('id')} refers to unknown image_id {a.get('image_id')}")
        if a.get("category_id") not in cat_index:
            raise ValueError(f"{path}: annotation {a.get('id')} has unknown category_id {a.get('category_id')}")
        entry = out[names[a["image_id"]]]
        entry["boxes"].append([x, y, x + w, y + h])
        entry["labels"].append(cat_index[a["category_id"]])
    targets = {
        k: {"boxes": np.asarray(v["boxes"], np.float32).reshape(-1, 4), "labels": np.asarray(v["labels"], np.int64)}
        for k, v in out.items()
    }
    return cat_names, targets


def coco_image_sizes(path: str | Path) -> dict[str, tuple[int, int]]:
    """{file_name: (width, height)} of the images of a COCO JSON that state their size."""
    data = _coco_json(Path(path))
    return {
        str(im["file_name"]): (int(im["width"]), int(im["height"]))
        for im in data.get("images", [])
        if im.get("width") and im.get("height")
    }


@dataclass(frozen=True)
class VOCAnnotation:
    """One Pascal VOC XML file: the image it names, its stated size and its objects (class name, box)."""

    file_name: str
    size: tuple[int, int] | None  # (width, height) as written in <size>, if any
    names: list[str]
    boxes: np.ndarray  # (k, 4) x0 y0 x1 y1, continuous pixel coordinates (VOC's 1-based xmin/ymin minus 1)


def read_voc(path: str | Path) -> VOCAnnotation:
    """Pascal VOC XML -> `VOCAnnotation`; a malformed file raises ValueError naming the file and the cause."""
    import xml.etree.ElementTree as ET

    path = Path(path)
    try:
        root = ET.parse(path).getroot()
    except FileNotFoundError:
        raise FileNotFoundError(f"annotation file not found: {path}") from None
    except ET.ParseError as e:
        raise ValueError(f"{path}: not valid XML ({e})") from None
    if root.tag != "annotation":
        raise ValueError(f"{path}: not a Pascal VOC file (root element <{root.tag}>, expected <annotation>)")
    file_name = (root.findtext("filename") or "").strip() or path.stem
    size = None
    w, h = root.findtext("size/width"), root.findtext("size/height")
    if w and h and float(w) > 0 and float(h) > 0:
        size = (int(float(w)), int(float(h)))
    names, boxes = [], []
    for i, obj in enumerate(root.iter("object")):
        name = (obj.findtext("name") or "").strip()
        try:
            xmin, ymin, xmax, ymax = (
                float(obj.findtext(f"bndbox/{k}") or "")
                for k in ("xmin", "ymin", "xmax", "ymax")
            )
        except ValueError:
            raise ValueError(f"{path}: object {i} ({name or 'unnamed'}) has no numeric <bndbox>") from None
        if not name:
            raise ValueError(f"{path}: object {i} has no <name>")
        if xmax < xmin or ymax < ymin:
            raise ValueError(f"{path}: object {i} ({name}) has an empty box {[xmin, ymin, xmax, ymax]}")
        names.append(name)
        boxes.append([xmin - 1.0, ymin - 1.0, xmax, ymax])  # VOC pixels are 1-based and inclusive
    return VOCAnnotation(file_name, size, names, np.asarray(boxes, np.float32).reshape(-1, 4))
