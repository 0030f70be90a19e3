"""sRGB -> synthetic raw (Brooks et al., CVPR 2019) plus a low-light capture model.

`unprocess` inverts a simple camera pipeline (random camera CCM, white-balance and brightness gains,
smoothstep tone curve, gamma 2.2) and samples the result through an RGGB mosaic. `capture_low_light`
darkens by an exposure ratio, adds heteroscedastic shot + read noise and quantises to sensor counts.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from posisp_dist.config import LowLightConfig, UnprocessConfig
from posisp_dist.isp.raw import mosaic

RGB2XYZ = np.array(
    [[0.4124564, 0.3575761, 0.1804375], [0.2126729, 0.7151522, 0.0721750], [0.0193339, 0.1191920, 0.9503041]],
    np.float64,
)
# XYZ -> camera matrices of four cameras, as used by Brooks et al.'s random CCM
XYZ2CAMS = np.array(
    [
        [[1.0234, -0.2969, -0.2266], [-0.5625, 1.6328, -0.0469], [-0.0703, 0.2188, 0.6406]],
        [[0.4913, -0.0541, -0.0202], [-0.6130, 1.3513, 0.2906], [-0.1564, 0.2151, 0.7183]],
        [[0.8380, -0.2630, -0.0639], [-0.2887, 1.0725, 0.2496], [-0.0627, 0.1427, 0.5438]],
        [[0.6596, -0.2079, -0.0562], [-0.4782, 1.3016, 0.1933], [-0.0970, 0.1581, 0.5181]],
    ],
    np.float64,
)


@dataclass(frozen=True)
class CameraMeta:
    """What a camera records with a capture: colour matrix, as-shot white balance and exposure."""

    cam2rgb: np.ndarray  # (3, 3)
    wb_gains: np.ndarray  # (3,) red, green, blue gains the camera would apply
    rgb_gain: float
    exposure_ratio: float = 1.0
    shot_noise: float = 0.0
    read_noise: float = 0.0


def xyz2cam_to_cam2rgb(xyz2cam: np.ndarray) -> np.ndarray:
    """cam2rgb from an XYZ->camera matrix: rgb2cam = xyz2cam @ rgb2xyz with rows summing to 1, inverted."""
    rgb2cam = np.asarray(xyz2cam, np.float64) @ RGB2XYZ
    rgb2cam = rgb2cam / rgb2cam.sum(axis=1, keepdims=True)
    return np.linalg.inv(rgb2cam)


def random_ccm(rng: np.random.Generator) -> np.ndarray:
    """A random convex combination of the four XYZ->camera matrices, as rgb2cam with rows summing to 1."""
    w = rng.uniform(1e-8, 1e8, size=len(XYZ2CAMS))
    xyz2cam = np.tensordot(w / w.sum(), XYZ2CAMS, axes=1)
    rgb2cam = xyz2cam @ RGB2XYZ
    return rgb2cam / rgb2cam.sum(axis=1, keepdims=True)


def inverse_smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return 0.5 - np.sin(np.arcsin(1.0 - 2.0 * x) / 3.0)


def unprocess(srgb: np.ndarray, rng: np.random.Generator, cfg: UnprocessConfig) -> tuple[np.ndarray, CameraMeta]:
    """(H, W, 3) sRGB in [0, 1] -> (H, W) linear RGGB mosaic in [0, 1] and its camera metadata."""
    rgb2cam = random_ccm(rng)
    rgb_gain = 1.0 / max(rng.normal(cfg.rgb_gain_mean, cfg.rgb_gain_std), 0.2)  # 0.2: no sign flip/explosion
    red_gain, blue_gain = rng.uniform(*cfg.red_gain), rng.uniform(*cfg.blue_gain)
    x = inverse_smoothstep(srgb.astype(np.float64))
    x = np.maximum(x, 1e-8) ** 2.2  # inverse gamma; 1e-8 keeps 0 ** 2.2 finite in gradients
    x = x @ rgb2cam.T
    gains = np.array([1.0 / red_gain, 1.0, 1.0 / blue_gain]) / rgb_gain
    # safe inverse gains: keep saturated highlights from being dimmed into a false colour
    grey = x.mean(axis=-1, keepdims=True)
    m = (np.maximum(grey - 0.9, 0.0) / 0.1) ** 2
    x = x * np.maximum(m + (1.0 - m) * gains, gains)
    bayer = mosaic(np.clip(x, 0.0, 1.0), "RGGB")
    meta = CameraMeta(np.linalg.inv(rgb2cam), np.array([red_gain, 1.0, blue_gain]), float(rgb_gain))
    return bayer.astype(np.float32), meta


def capture_low_light(
    bayer: np.ndarray, meta: CameraMeta, rng: np.random.Generator, cfg: LowLightConfig
) -> tuple[np.ndarray, CameraMeta, int, int]:
    """Darken, add noise and quantise: returns uint16 counts, updated meta, black level, white level."""
    lo, hi = np.log(cfg.exposure_ratio[0]), np.log(cfg.exposure_ratio[1])
    ratio = float(np.exp(rng.uniform(lo, hi)))
    shot = float(np.exp(rng.uniform(np.log(cfg.shot_noise[0]), np.log(cfg.shot_noise[1]))))
    read = float(
        np.exp(cfg.read_noise_slope * np.log(shot) + cfg.read_noise_intercept + rng.normal(0.0, cfg.read_noise_std))
    )
    x = bayer.astype(np.float64) / ratio
    x = x + rng.normal(size=x.shape) * np.sqrt(x * shot + read)  # both terms are variances (Brooks et al.)
    white = 2**cfg.bit_depth - 1
    counts = np.round(np.clip(x, 0.0, 1.0) * (white - cfg.black_level) + cfg.black_level)
    meta = CameraMeta(meta.cam2rgb, meta.wb_gains, meta.rgb_gain, ratio, shot, read)
    return counts.astype(np.uint16), meta, cfg.black_level, white
