"""Reference renderings of raw data: 'input RAW' (normalise + demosaic) and a fixed 'camera ISP'."""

from __future__ import annotations

from types import ModuleType
from typing import Any

import numpy as np

from posisp_dist.isp.raw import demosaic_bilinear

Array = Any


def input_raw(raw: Array, black_level: Array, white_level: Array, cfa: str = "RGGB", xp: ModuleType = np) -> Array:
    """The paper's 'Input RAW' baseline: per-image black/white normalisation and bilinear demosaic only."""
    raw = xp.asarray(raw, dtype=xp.float32)
    black = xp.asarray(black_level, dtype=xp.float32).reshape(-1, 1, 1)
    white = xp.asarray(white_level, dtype=xp.float32).reshape(-1, 1, 1)
    if bool((white <= black).any()):
        raise ValueError("every image needs white_level > black_level")
    return demosaic_bilinear(xp.clip((raw - black) / (white - black), 0.0, 1.0), cfa, xp)


def grey_world_gains(img: Array, xp: ModuleType = np) -> Array:
    """Per-image (B, 3) gains that make the channel means equal to the green mean."""
    means = img.reshape(img.shape[0], -1, 3).mean(axis=1)
    return means[:, 1:2] / xp.maximum(means, 1e-4)  # 1e-4: all-black channels get a finite gain


def smoothstep(x: Array) -> Array:
    """The global tone curve that Brooks et al.'s unprocessing inverts: 3x^2 - 2x^3."""
    return 3.0 * x * x - 2.0 * x * x * x


def camera_isp(rgb_cam: Array, cam2rgb: Array, xp: ModuleType = np) -> Array:
    """A conventional fixed ISP on demosaiced linear camera RGB: grey-world WB -> CCM -> gamma 1/2.2 -> tone."""
    b = rgb_cam.shape[0]
    x = rgb_cam * grey_world_gains(rgb_cam, xp)[:, None, None, :]
    x = xp.clip(x, 0.0, 1.0)
    m = xp.asarray(cam2rgb, dtype=xp.float32).reshape(b, 3, 3)
    x = xp.matmul(x.reshape(b, -1, 3), m.transpose(0, 2, 1)).reshape(rgb_cam.shape)
    x = xp.clip(x, 1e-8, 1.0) ** (1.0 / 2.2)  # 1e-8: no 0**(1/2.2) slope blow-up
    return smoothstep(x).astype(xp.float32)


def camera_isp_from_raw(
    raw: Array, black: Array, white: Array, cam2rgb: Array, cfa: str = "RGGB", xp: ModuleType = np
) -> Array:
    """Input-RAW rendering followed by the fixed camera ISP."""
    return camera_isp(input_raw(raw, black, white, cfa, xp), cam2rgb, xp)
