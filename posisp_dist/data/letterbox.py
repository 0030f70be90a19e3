"""Letterboxing a Bayer mosaic to the training size at the level of its 2x2 cells, and its boxes with it.

The cells are packed into R, Gr, Gb, B planes in the file's own CFA order, scaled by one factor (PIL
bilinear, antialiased), centred on a square canvas filled with the black level and mosaicked again as RGGB.
"""

from __future__ import annotations

import numpy as np

from posisp_dist.data.readers import RawImage

PLANES = ("R", "Gr", "Gb", "B")


def resize(img: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """(h, w[, c]) -> hw, per channel, bilinear with antialiasing (PIL), float32."""
    from PIL import Image

    planes = img[..., None] if img.ndim == 2 else img
    out = [np.asarray(Image.fromarray(np.ascontiguousarray(planes[..., c], np.float32)).resize(
        (hw[1], hw[0]), Image.Resampling.BILINEAR)) for c in range(planes.shape[-1])]
    return np.stack(out, -1)


def letterbox(raw: RawImage, size: int) -> tuple[np.ndarray, tuple[float, float], tuple[int, int], tuple[int, int]]:
    """The mosaic as an RGGB `size`² mosaic -> (counts, (sx, sy), (ox, oy) offset, (w, h) of the content)."""
    bayer = raw.bayer.astype(np.float32)
    h, w = bayer.shape
    cells = [bayer[0::2, 0::2], bayer[0::2, 1::2], bayer[1::2, 0::2], bayer[1::2, 1::2]]
    r_row = raw.cfa.index("R") // 2
    named = {(c if c != "G" else ("Gr" if pos // 2 == r_row else "Gb")): cells[pos] for pos, c in enumerate(raw.cfa)}
    planes = np.stack([named[k] for k in PLANES], -1)
    scale = min(size / h, size / w)
    ch, cw = max(1, round(h / 2 * scale)), max(1, round(w / 2 * scale))  # content, in 2x2 cells
    oy, ox = (size // 2 - ch) // 2, (size // 2 - cw) // 2
    canvas = np.full((size // 2, size // 2, 4), raw.black_level, np.float32)  # padding reads as black
    canvas[oy : oy + ch, ox : ox + cw] = resize(planes, (ch, cw))
    out = np.empty((size, size), np.float32)
    out[0::2, 0::2], out[0::2, 1::2], out[1::2, 0::2], out[1::2, 1::2] = np.moveaxis(canvas, -1, 0)
    counts = np.clip(np.round(out), 0, 65535).astype(np.uint16)
    return counts, (2 * cw / w, 2 * ch / h), (2 * ox, 2 * oy), (2 * cw, 2 * ch)


def transform_boxes(
    boxes: np.ndarray, frame: tuple[int, int] | None, raw_wh: tuple[int, int], scale, offset, content
) -> tuple[np.ndarray, np.ndarray]:
    """Annotation-frame boxes -> letterboxed pixels, clipped to the content; (boxes, kept mask: >= 1 px each way)."""
    b = boxes.astype(np.float64).copy()
    if frame is not None:  # annotated on a rendering of another size (e.g. the camera JPEG)
        b *= np.tile([raw_wh[0] / frame[0], raw_wh[1] / frame[1]], 2)
    b = b * np.tile(scale, 2) + np.tile(offset, 2)
    lo, hi = np.tile(offset, 2), np.tile(np.add(offset, content), 2)
    b = np.clip(b, lo, hi)
    keep = ((b[:, 2] - b[:, 0]) >= 1) & ((b[:, 3] - b[:, 1]) >= 1)
    return b.astype(np.float32), keep
