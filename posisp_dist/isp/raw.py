"""Raw sensor handling: black/white level normalisation, Bayer mosaic/packing and bilinear demosaic."""

from __future__ import annotations

from types import ModuleType
from typing import Any

import numpy as np

Array = Any
CFA_PATTERNS = ("RGGB", "BGGR", "GRBG", "GBRG")
_CH = {"R": 0, "G": 1, "B": 2}
_KERNEL_G = np.array([[0, 1, 0], [1, 4, 1], [0, 1, 0]], np.float32) / 4.0
_KERNEL_RB = np.array([[1, 2, 1], [2, 4, 2], [1, 2, 1]], np.float32) / 4.0


def check_bayer(bayer: Array, *, batched: bool = True) -> None:
    """Raise ValueError unless `bayer` is a finite (B, H, W) (or (H, W)) mosaic with even H and W."""
    want = 3 if batched else 2
    shape = getattr(bayer, "shape", None)
    if shape is None or len(shape) != want:
        raise ValueError(f"raw mosaic must have {want} dims ({'B, ' if batched else ''}H, W), got shape {shape}")
    h, w = shape[-2:]
    if h < 4 or w < 4 or h % 2 or w % 2:
        raise ValueError(f"raw mosaic height and width must be even and >= 4 for a 2x2 CFA, got {h}x{w}")
    kind = bayer.dtype.kind
    if kind not in "uif":
        raise ValueError(f"raw mosaic must hold numbers (sensor counts), got dtype {bayer.dtype}")
    if kind == "f" and bool(((bayer - bayer) != 0).any()):  # x - x is nan exactly for nan and +-inf (any xp)
        raise ValueError("raw mosaic holds NaN or infinite values; sensor counts are finite")
    if kind != "u" and bool((bayer < 0).any()):
        raise ValueError("raw mosaic holds negative values; sensor counts are >= 0")


def cfa_channel_map(cfa: str) -> np.ndarray:
    """(2, 2) array of channel indices (0=R, 1=G, 2=B) for a CFA pattern string like 'RGGB'."""
    if cfa not in CFA_PATTERNS:
        raise ValueError(f"unsupported CFA pattern {cfa!r}; supported: {CFA_PATTERNS}")
    return np.array([[_CH[cfa[0]], _CH[cfa[1]]], [_CH[cfa[2]], _CH[cfa[3]]]])


def normalize(raw: Array, black_level: float, white_level: float, xp: ModuleType = np) -> Array:
    """Map sensor counts to [0, 1]: (raw - black) / (white - black), clipped."""
    if not white_level > black_level:
        raise ValueError(f"white level {white_level} must exceed black level {black_level}")
    x = (xp.asarray(raw, dtype=xp.float32) - black_level) / float(white_level - black_level)
    return xp.clip(x, 0.0, 1.0)


def mosaic(rgb: Array, cfa: str = "RGGB", xp: ModuleType = np) -> Array:
    """Sample a (..., H, W, 3) image through a 2x2 colour filter array into a (..., H, W) mosaic."""
    cmap = cfa_channel_map(cfa)
    out = xp.empty(rgb.shape[:-1], dtype=rgb.dtype)
    for dy in range(2):
        for dx in range(2):
            out[..., dy::2, dx::2] = rgb[..., dy::2, dx::2, int(cmap[dy, dx])]
    return out


def pack(bayer: Array, xp: ModuleType = np) -> Array:
    """(..., H, W) mosaic -> (..., H/2, W/2, 4) planes in CFA order (e.g. R, Gr, Gb, B for RGGB)."""
    return xp.stack(
        [bayer[..., 0::2, 0::2], bayer[..., 0::2, 1::2], bayer[..., 1::2, 0::2], bayer[..., 1::2, 1::2]], -1
    )


def unpack(planes: Array, xp: ModuleType = np) -> Array:
    """Inverse of `pack`."""
    h2, w2 = planes.shape[-3:-1]
    out = xp.empty((*planes.shape[:-3], 2 * h2, 2 * w2), dtype=planes.dtype)
    out[..., 0::2, 0::2], out[..., 0::2, 1::2] = planes[..., 0], planes[..., 1]
    out[..., 1::2, 0::2], out[..., 1::2, 1::2] = planes[..., 2], planes[..., 3]
    return out


def _conv3x3(x: Array, k: np.ndarray, xp: ModuleType) -> Array:
    """3x3 correlation over the last two dims with mirror padding (keeps the CFA's 2x2 parity)."""
    h, w = x.shape[-2:]
    pad = [(0, 0)] * (x.ndim - 2) + [(1, 1), (1, 1)]
    p = xp.pad(x, pad, mode="reflect")
    out = xp.zeros_like(x)
    for dy in range(3):
        for dx in range(3):
            if k[dy, dx]:
                out += float(k[dy, dx]) * p[..., dy : dy + h, dx : dx + w]
    return out


def demosaic_bilinear(bayer: Array, cfa: str = "RGGB", xp: ModuleType = np) -> Array:
    """Bilinear demosaic of a (B, H, W) mosaic in [0, 1] to (B, H, W, 3) linear camera RGB."""
    check_bayer(bayer)
    cmap = cfa_channel_map(cfa)
    b, h, w = bayer.shape
    out = xp.empty((b, h, w, 3), dtype=xp.float32)
    tiled = np.tile(cmap, (h // 2, w // 2))
    for c, kernel in ((0, _KERNEL_RB), (1, _KERNEL_G), (2, _KERNEL_RB)):
        mask = xp.asarray(tiled == c, dtype=xp.float32)
        out[..., c] = _conv3x3(bayer * mask, kernel, xp)
    return xp.clip(out, 0.0, 1.0)
