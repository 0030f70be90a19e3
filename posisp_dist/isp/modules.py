"""The ten ISP modules of POS-ISP / AdaptiveISP as pure, batched functions over an array namespace.

Every module has the signature ``fn(img, params, xp) -> img`` where ``img`` is float32 linear RGB in
[0, 1] shaped ``(B, H, W, 3)`` and ``params`` is ``(B, k)`` in *physical* units (see `registry.py`).
Outputs are clipped to [0, 1] so that any order of modules keeps the task network in its input domain
(AdaptiveISP's convention; the paper's code leaves exposure/gamma/WB unclipped).
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

Array = Any

LUMA = (0.27, 0.67, 0.06)  # luminance weights used by AdaptiveISP's contrast, desaturation and WB
SHARPEN_KERNEL = ((1, 1, 1), (1, 5, 1), (1, 1, 1))  # torchvision adjust_sharpness smoothing kernel, /13
EPS = 1e-6


def _col(p: Array, i: int) -> Array:
    """Column i of (B, k) params, shaped (B, 1, 1, 1) to broadcast over (B, H, W, C)."""
    return p[:, i][:, None, None, None]


def luminance(img: Array, xp: ModuleType) -> Array:
    """Per-pixel luminance (B, H, W) with AdaptiveISP's weights."""
    return img[..., 0] * LUMA[0] + img[..., 1] * LUMA[1] + img[..., 2] * LUMA[2]


def _clip01(x: Array, xp: ModuleType) -> Array:
    return xp.clip(x, 0.0, 1.0).astype(xp.float32, copy=False)


def box_mean(x: Array, r: int, xp: ModuleType) -> Array:
    """Mean over a (2r+1)^2 window of a (B, H, W) array via an integral image (edge-replicated)."""
    b, h, w = x.shape
    p = xp.pad(x, ((0, 0), (r + 1, r), (r + 1, r)), mode="edge").astype(xp.float32, copy=False)
    p[:, 0, :] = 0  # the leading zero row/column turns cumsum into an exclusive integral image
    p[:, :, 0] = 0
    s = p.cumsum(axis=1).cumsum(axis=2)
    k = 2 * r + 1
    total = s[:, k:, k:] - s[:, :h, k:] - s[:, k:, :w] + s[:, :h, :w]
    return total / float(k * k)


def exposure(img: Array, params: Array, xp: ModuleType) -> Array:
    """Scale linear intensity by 2**EV."""
    return _clip01(img * xp.exp2(_col(params, 0)), xp)


def gamma(img: Array, params: Array, xp: ModuleType) -> Array:
    """Raise intensity to the power gamma (gamma < 1 brightens)."""
    base = xp.maximum(img, EPS)  # avoid 0**gamma: infinite slope and NaN gradients for gamma < 1
    return _clip01(base ** _col(params, 0), xp)


def ccm_matrix(params: Array, xp: ModuleType) -> Array:
    """(B, 9) matrix entries -> (B, 3, 3) float32 matrices whose rows sum to 1."""
    m = params.reshape(-1, 3, 3)
    s = m.sum(axis=2, keepdims=True)
    # keep near-zero row sums from exploding the normalisation; sign preserved, 0 counts as positive
    s = xp.where(xp.abs(s) < 1e-3, xp.where(s < 0, -1e-3, 1e-3), s)
    return (m / s).astype(xp.float32)


def ccm(img: Array, params: Array, xp: ModuleType) -> Array:
    """Apply a 3x3 colour matrix whose rows are normalised to sum to 1 (greys stay grey)."""
    m = ccm_matrix(params, xp)
    b, h, w, _ = img.shape
    out = xp.matmul(img.reshape(b, h * w, 3), m.transpose(0, 2, 1))
    return _clip01(out.reshape(b, h, w, 3), xp)


def blur3x3(img: Array, xp: ModuleType) -> Array:
    """torchvision's sharpness smoothing filter on (B, H, W, C), edges replicated."""
    p = xp.pad(img, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge")
    h, w = img.shape[1:3]
    out = xp.zeros_like(img)
    for dy in range(3):
        for dx in range(3):
            out += SHARPEN_KERNEL[dy][dx] * p[:, dy : dy + h, dx : dx + w]
    return out / 13.0


def sharpen(img: Array, params: Array, xp: ModuleType) -> Array:
    """Blend towards (f < 1) or away from (f > 1) a 3x3 blur: f*x + (1-f)*blur(x)."""
    f = _col(params, 0)
    return _clip01(f * img + (1.0 - f) * blur3x3(img, xp), xp)


def denoise(img: Array, params: Array, xp: ModuleType, search: int = 5, patch: int = 2) -> Array:
    """Grey-guided non-local means: 11x11 search, 5x5 patches, weights exp(-patch_dist / h)."""
    b, h, w, _ = img.shape
    grey = luminance(img, xp)
    inv_h = (1.0 / params[:, 0])[:, None, None]
    gp = xp.pad(grey, ((0, 0), (search, search), (search, search)), mode="reflect")
    ip = xp.pad(img, ((0, 0), (search, search), (search, search), (0, 0)), mode="reflect")
    acc = xp.zeros_like(img)
    wsum = xp.zeros_like(grey)
    for dy in range(2 * search + 1):
        for dx in range(2 * search + 1):
            diff = grey - gp[:, dy : dy + h, dx : dx + w]
            wgt = xp.exp(-box_mean(diff * diff, patch, xp) * inv_h)
            acc += wgt[..., None] * ip[:, dy : dy + h, dx : dx + w]
            wsum += wgt
    return _clip01(acc / wsum[..., None], xp)  # wsum >= 1: the centre offset always has weight 1


def tone_knots(params: Array, xp: ModuleType) -> tuple[Array, Array]:
    """(B, n) relative slopes -> knot values (B, n+1) from 0 to 1 and normalised slopes (B, n)."""
    slopes = params / params.sum(axis=1, keepdims=True)  # ranges keep every slope > 0
    knots = xp.concatenate([xp.zeros_like(slopes[:, :1]), xp.cumsum(slopes, axis=1)], axis=1)
    return knots, slopes


def tone_curve(img: Array, params: Array, xp: ModuleType) -> Array:
    """Global 8-segment piecewise-linear curve; slopes normalised so that 1 maps to 1."""
    n = params.shape[1]
    knots, slopes = tone_knots(params, xp)
    b = img.shape[0]
    t = xp.clip(img, 0.0, 1.0).reshape(b, -1) * n
    seg = xp.minimum(xp.floor(t), n - 1).astype(xp.int32)  # x == 1 belongs to the last segment
    out = xp.take_along_axis(knots, seg, axis=1) + (t - seg) * xp.take_along_axis(slopes, seg, axis=1)
    return _clip01(out.reshape(img.shape), xp)


def contrast(img: Array, params: Array, xp: ModuleType) -> Array:
    """Lerp towards a cosine S-curve applied to luminance (alpha < 0 flattens)."""
    lum = xp.clip(luminance(img, xp), 0.0, 1.0)[..., None]
    curved = 0.5 - 0.5 * xp.cos(xp.pi * lum)
    enhanced = img / (lum + EPS) * curved  # EPS: black pixels stay black instead of 0/0
    a = _col(params, 0)
    return _clip01(img + a * (enhanced - img), xp)


def saturation_plus(img: Array, params: Array, xp: ModuleType) -> Array:
    """Raise HSV saturation most in mid-tones, s' = s + (1-s)(0.5-|0.5-v|)*0.8, blended by alpha."""
    v = img.max(axis=3, keepdims=True)
    s = (v - img.min(axis=3, keepdims=True)) / xp.maximum(v, EPS)  # EPS: black has s = 0
    s_new = s + (1.0 - s) * (0.5 - xp.abs(0.5 - v)) * 0.8
    # at fixed hue and value each channel is affine in s: x_c = v - v*s*f_c
    enhanced = v - (v - img) * (s_new / xp.maximum(s, EPS))
    a = _col(params, 0)
    return _clip01(img + a * (enhanced - img), xp)


def desaturation(img: Array, params: Array, xp: ModuleType) -> Array:
    """Lerp each pixel towards its luminance (alpha = 1 gives greyscale)."""
    lum = luminance(img, xp)[..., None]
    return _clip01(img + _col(params, 0) * (lum - img), xp)


def white_balance(img: Array, params: Array, xp: ModuleType) -> Array:
    """Per-channel gains normalised to keep luminance: 0.27 r + 0.67 g + 0.06 b = 1."""
    return _clip01(img * wb_gains(params)[:, None, None, :], xp)


def wb_gains(params: Array) -> Array:
    """(B, 3) raw gains -> gains scaled so that 0.27 r + 0.67 g + 0.06 b = 1."""
    norm = params[:, 0] * LUMA[0] + params[:, 1] * LUMA[1] + params[:, 2] * LUMA[2]
    return params / norm[:, None]
