"""Fused CPU kernels (Numba) for the ISP modules: one memory pass per module, parallel over images.

Each kernel computes what its reference in `modules.py` computes, in one loop over pixels that LLVM
vectorises (AVX2/AVX-512), instead of several NumPy passes with temporaries. Two things keep the loops
vectorisable: `error_model="numpy"` (no zero-division branch per element) and no libm calls: the
transcendentals are short polynomials: log2 and exp2 split into a float's exponent bits and a fitted
polynomial of its mantissa (gamma; the NLM weights as exp(-z) = 2**(-z log2 e)), and a sine polynomial for
the contrast S-curve. `TOLERANCE` states the largest absolute difference from the reference allowed per
module; the tests check it on random images with random parameters over the whole range, ends included.

Parameters arrive in physical units, exactly as for the reference functions; per-image constants (gains,
matrices, knots) are prepared once per call with NumPy, so the kernels only touch pixels.
"""
from __future__ import annotations

from posisp_dist.isp import numba_env  # noqa: F401  (Numba's process settings: before Numba is imported)

# isort: split

from collections.abc import Callable
from types import ModuleType
from typing import Any

import numba as nb
import numpy as np

from posisp_dist.isp import modules as m
from posisp_dist.isp.fast_nlm import denoise, denoise_strengths  # noqa: F401  (the NLM kernel, in its own file)
from posisp_dist.isp.fast_prims import (
    EPS,
    F1,
    HALF,
    LB,
    LG,
    LR,
    _clip,
    _cpu_share,
    _exp2,
    _f32,
    _flat,
    _inline,
    _jit,
    _log2,
)

Out = np.ndarray | None  # the point-wise modules' optional output buffer, see `_per_pixel`
TONE_SEGMENTS = 8  # the tone curve's segments, a compile-time constant so that the kernel's ramps unroll

TOLERANCE: dict[str, float] = {
    "exposure": 1e-6,
    "white_balance": 1e-6,
    "ccm": 1e-5,
    "gamma": 1e-5,  # log2/exp2 polynomials
    "tone": 1e-5,
    "contrast": 1e-5,  # sine polynomial
    "saturation": 1e-5,
    "desaturation": 1e-6,
    "sharpen": 1e-5,
    "denoise": 1e-4,  # exp2 polynomial (relative error < 6e-7); weights below exp(-24) dropped
}


@_inline
def _s_curve(lum: float) -> float:
    """0.5 - 0.5 cos(pi * lum) for lum in [0, 1], as 0.5 + 0.5 sin(t) with t = pi (lum - 0.5)."""
    t = np.float32(np.pi) * (lum - HALF)
    t2 = t * t
    p = np.float32(1 / 120) + t2 * (
        np.float32(-1 / 5040) + t2 * (np.float32(1 / 362880) - t2 * np.float32(1 / 39916800))
    )
    return HALF + HALF * t * (F1 + t2 * (np.float32(-1 / 6) + t2 * p))


# Per-pixel kernels index flat (B, H*W*3) rows as 3 * p + c: with the literal stride LLVM sees the channel
# interleave and vectorises across pixels (a (B, N, 3) view hides the 3 behind a runtime stride). The three
# channel stores are written out in each kernel on purpose: moved into a shared helper that takes `out`, the
# loops stop vectorising (checked with `inspect_asm`).


@_jit
def _scale_channels(x: np.ndarray, gains: np.ndarray, out: np.ndarray) -> None:
    """out = clip(x * gains[b, c]): exposure (equal gains) and white balance."""
    for b in nb.prange(x.shape[0]):
        g0, g1, g2 = gains[b, 0], gains[b, 1], gains[b, 2]
        xb, ob = x[b], out[b]
        for p in range(xb.shape[0] // 3):
            ob[3 * p] = _clip(xb[3 * p] * g0)
            ob[3 * p + 1] = _clip(xb[3 * p + 1] * g1)
            ob[3 * p + 2] = _clip(xb[3 * p + 2] * g2)


@_jit
def _matrix(x: np.ndarray, mat: np.ndarray, out: np.ndarray) -> None:
    for b in nb.prange(x.shape[0]):
        m00, m01, m02 = mat[b, 0, 0], mat[b, 0, 1], mat[b, 0, 2]
        m10, m11, m12 = mat[b, 1, 0], mat[b, 1, 1], mat[b, 1, 2]
        m20, m21, m22 = mat[b, 2, 0], mat[b, 2, 1], mat[b, 2, 2]
        xb, ob = x[b], out[b]
        for p in range(xb.shape[0] // 3):
            r, g, bl = xb[3 * p], xb[3 * p + 1], xb[3 * p + 2]
            ob[3 * p] = _clip(m00 * r + m01 * g + m02 * bl)
            ob[3 * p + 1] = _clip(m10 * r + m11 * g + m12 * bl)
            ob[3 * p + 2] = _clip(m20 * r + m21 * g + m22 * bl)


@_jit
def _gamma(x: np.ndarray, g: np.ndarray, out: np.ndarray) -> None:
    """out = clip(max(x, EPS) ** g) as 2**(g log2 x), x clamped to [EPS, 1]."""
    for b in nb.prange(x.shape[0]):
        gb = g[b]
        xb, ob = x[b], out[b]
        for i in range(xb.shape[0]):
            ob[i] = min(_exp2(gb * _log2(min(max(xb[i], EPS), F1))), F1)


@_jit
def _tone(x: np.ndarray, d: np.ndarray, c: np.ndarray, out: np.ndarray) -> None:
    """The tone curve as hinges: with t = n clip(x), knot[seg] + (t - seg) slope[seg] equals the ramp sum
    sum_k slope_k clip(t - k, 0, 1) = c + sum_k d_k max(t, k), d_k = slope_k - slope_(k-1) and
    c = -sum_k k d_k. Two operations a segment, no table gather, and the k loop unrolls at compile time."""
    n = np.float32(TONE_SEGMENTS)
    for b in nb.prange(x.shape[0]):
        xb, ob, db, cb = x[b], out[b], d[b], c[b]
        for i in range(xb.shape[0]):
            t = _clip(xb[i]) * n
            acc = cb + db[0] * t
            for k in range(1, TONE_SEGMENTS):
                acc += db[k] * max(t, np.float32(k))
            ob[i] = _clip(acc)


@_jit
def _contrast(x: np.ndarray, alpha: np.ndarray, out: np.ndarray) -> None:
    for b in nb.prange(x.shape[0]):
        a = alpha[b]
        xb, ob = x[b], out[b]
        for p in range(xb.shape[0] // 3):
            r, g, bl = xb[3 * p], xb[3 * p + 1], xb[3 * p + 2]
            lum = _clip(r * LR + g * LG + bl * LB)
            k = _s_curve(lum) / (lum + EPS)
            ob[3 * p] = _clip(r + a * (r * k - r))
            ob[3 * p + 1] = _clip(g + a * (g * k - g))
            ob[3 * p + 2] = _clip(bl + a * (bl * k - bl))


@_jit
def _saturation(x: np.ndarray, alpha: np.ndarray, out: np.ndarray) -> None:
    for b in nb.prange(x.shape[0]):
        a = alpha[b]
        xb, ob = x[b], out[b]
        for p in range(xb.shape[0] // 3):
            r, g, bl = xb[3 * p], xb[3 * p + 1], xb[3 * p + 2]
            v = max(r, max(g, bl))
            s = (v - min(r, min(g, bl))) / max(v, EPS)
            k = (s + (F1 - s) * (HALF - abs(HALF - v)) * np.float32(0.8)) / max(s, EPS)
            ob[3 * p] = _clip(r + a * ((v - (v - r) * k) - r))
            ob[3 * p + 1] = _clip(g + a * ((v - (v - g) * k) - g))
            ob[3 * p + 2] = _clip(bl + a * ((v - (v - bl) * k) - bl))


@_jit
def _desaturation(x: np.ndarray, alpha: np.ndarray, out: np.ndarray) -> None:
    for b in nb.prange(x.shape[0]):
        a = alpha[b]
        xb, ob = x[b], out[b]
        for p in range(xb.shape[0] // 3):
            r, g, bl = xb[3 * p], xb[3 * p + 1], xb[3 * p + 2]
            lum = r * LR + g * LG + bl * LB
            ob[3 * p] = _clip(r + a * (lum - r))
            ob[3 * p + 1] = _clip(g + a * (lum - g))
            ob[3 * p + 2] = _clip(bl + a * (lum - bl))


@_jit
def _sharpen(xp_: np.ndarray, factor: np.ndarray, out: np.ndarray) -> None:
    """f*x + (1-f)*blur3x3(x) on an edge-padded (B, H+2, (W+2)*3) input; parallel over (image, row)."""
    bsz, h, w3 = out.shape[0], out.shape[1], out.shape[2]
    for job in nb.prange(bsz * h):
        b, y = job // h, job % h
        f = factor[b]
        top, mid, bot = xp_[b, y], xp_[b, y + 1], xp_[b, y + 2]
        for i in range(w3):  # i walks (x, c); neighbours in x are 3 floats apart
            c = mid[i + 3]
            ring = top[i] + top[i + 3] + top[i + 6] + mid[i] + mid[i + 6] + bot[i] + bot[i + 3] + bot[i + 6]
            out[b, y, i] = _clip(f * c + (F1 - f) * (ring + np.float32(5.0) * c) * np.float32(1 / 13))


def _per_pixel(kernel: Callable[..., None], img: np.ndarray, *constants: np.ndarray, out: Out = None) -> np.ndarray:
    """Run a flat-row kernel `kernel(x, *constants, out)` on a (B, H, W, 3) batch. `out`, when given, is a
    C-contiguous float32 array of img's shape to write into (benchmarks use it to time the kernel alone:
    a fresh output of over 32 MB comes from mmap, and its first touch costs page faults)."""
    x = _flat(img)
    if out is None:
        out = np.empty(img.shape, np.float32)
    elif out.shape != img.shape or out.dtype != np.float32 or not out.flags.c_contiguous:
        raise ValueError(f"out must be a C-contiguous float32 array of shape {img.shape}")
    kernel(x, *constants, out.reshape(x.shape))
    return out


def exposure(img: np.ndarray, params: np.ndarray, xp: ModuleType = np, out: Out = None) -> np.ndarray:
    return _per_pixel(_scale_channels, img, _f32(np.repeat(np.exp2(_f32(params[:, :1])), 3, axis=1)), out=out)


def white_balance(img: np.ndarray, params: np.ndarray, xp: ModuleType = np, out: Out = None) -> np.ndarray:
    return _per_pixel(_scale_channels, img, _f32(m.wb_gains(_f32(params))), out=out)


def ccm(img: np.ndarray, params: np.ndarray, xp: ModuleType = np, out: Out = None) -> np.ndarray:
    return _per_pixel(_matrix, img, _f32(m.ccm_matrix(_f32(params), np)), out=out)


def gamma(img: np.ndarray, params: np.ndarray, xp: ModuleType = np, out: Out = None) -> np.ndarray:
    return _per_pixel(_gamma, img, _f32(params[:, 0]), out=out)


def tone_curve(img: np.ndarray, params: np.ndarray, xp: ModuleType = np, out: Out = None) -> np.ndarray:
    if params.shape[1] != TONE_SEGMENTS:  # the kernel is compiled for the registry's 8 segments
        ref = _f32(m.tone_curve(_f32(img), _f32(params), np))
        if out is None:
            return ref
        out[...] = ref
        return out
    slopes = _f32(m.tone_knots(_f32(params), np)[1])
    d = _f32(np.diff(slopes, axis=1, prepend=0))
    return _per_pixel(_tone, img, d, _f32(-(d * np.arange(TONE_SEGMENTS)).sum(axis=1)), out=out)


def contrast(img: np.ndarray, params: np.ndarray, xp: ModuleType = np, out: Out = None) -> np.ndarray:
    return _per_pixel(_contrast, img, _f32(params[:, 0]), out=out)


def saturation_plus(img: np.ndarray, params: np.ndarray, xp: ModuleType = np, out: Out = None) -> np.ndarray:
    return _per_pixel(_saturation, img, _f32(params[:, 0]), out=out)


def desaturation(img: np.ndarray, params: np.ndarray, xp: ModuleType = np, out: Out = None) -> np.ndarray:
    return _per_pixel(_desaturation, img, _f32(params[:, 0]), out=out)


def sharpen(img: np.ndarray, params: np.ndarray, xp: ModuleType = np) -> np.ndarray:
    b, h, w, _ = img.shape
    padded = np.pad(_f32(img), ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge").reshape(b, h + 2, (w + 2) * 3)
    out = np.empty((b, h, w * 3), np.float32)
    _sharpen(padded, _f32(params[:, 0]), out)
    return out.reshape(img.shape)


@_jit
def _copy(x: np.ndarray, out: np.ndarray) -> None:
    for b in nb.prange(x.shape[0]):
        xb, ob = x[b], out[b]
        for i in range(xb.shape[0]):
            ob[i] = xb[i]


def copy(img: np.ndarray, out: np.ndarray) -> np.ndarray:
    """out = img with the kernels' loop shape and threads and no arithmetic: their bandwidth roofline."""
    return _per_pixel(_copy, img, out=out)


# reference function -> fused kernel; dispatch is by identity so a re-registered module keeps its own code
KERNELS: dict[Callable[..., Any], Callable[..., Any]] = {
    m.exposure: _cpu_share(exposure),
    m.gamma: _cpu_share(gamma),
    m.ccm: _cpu_share(ccm),
    m.sharpen: _cpu_share(sharpen),
    m.denoise: _cpu_share(denoise),
    m.tone_curve: _cpu_share(tone_curve),
    m.contrast: _cpu_share(contrast),
    m.saturation_plus: _cpu_share(saturation_plus),
    m.desaturation: _cpu_share(desaturation),
    m.white_balance: _cpu_share(white_balance),
}
