"""Fused CPU kernels (Numba) for the ISP modules: one memory pass per module, parallel over images.

Each kernel computes what its reference in `modules.py` computes, in one loop over pixels that LLVM
vectorises (AVX2/AVX-512), instead of several NumPy passes with temporaries. Two things keep the loops
vectorisable: `error_model="numpy"` (no zero-division branch per element) and no libm calls: the
transcendentals are short polynomials (log2/exp2 on the float's exponent and mantissa bits for gamma, a
sine polynomial for the contrast S-curve, exp(-z) = (e^(-z/32))^32 for the NLM weights). `TOLERANCE`
states the largest absolute difference from the reference allowed per module; the tests check it on
random images with random parameters over the whole range, the range ends included.

Parameters arrive in physical units, exactly as for the reference functions; per-image constants (gains,
matrices, knots) are prepared once per call with NumPy, so the kernels only touch pixels.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from types import ModuleType
from typing import Any

import numba as nb
import numpy as np

from posisp_dist.isp import modules as m

F0, F1, HALF, EPS = np.float32(0.0), np.float32(1.0), np.float32(0.5), np.float32(m.EPS)
LR, LG, LB = (np.float32(c) for c in m.LUMA)
LN2, INV_LN2, SQRT2 = np.float32(np.log(2.0)), np.float32(1.0 / np.log(2.0)), np.float32(np.sqrt(2.0))
MANTISSA = np.float32(2.0**-23)
BITS_EPS, BITS_ONE = np.int32(np.float32(m.EPS).view(np.int32)), np.int32(np.float32(1.0).view(np.int32))
CHUNK = 2048  # floats per scratch chunk: two of them stay in L1
NLM_ZMAX = np.float32(24.0)  # exp(-24) = 4e-11: beyond it an NLM weight is 0 next to the centre's 1

TOLERANCE: dict[str, float] = {
    "exposure": 1e-6,
    "white_balance": 1e-6,
    "ccm": 1e-5,
    "gamma": 1e-5,  # log2/exp2 polynomials: relative error ~1e-6
    "tone": 1e-5,
    "contrast": 1e-5,  # sine polynomial
    "saturation": 1e-5,
    "desaturation": 1e-6,
    "sharpen": 1e-5,
    "denoise": 1e-4,  # exp polynomial (relative error ~1e-6); weights below exp(-24) dropped
}

_OPTS = {"fastmath": True, "error_model": "numpy", "cache": True}
_jit = nb.njit(parallel=True, nogil=True, **_OPTS)
_inline = nb.njit(inline="always", **_OPTS)


@_inline
def _clip(v: float) -> float:
    return min(max(v, F0), F1)


@_inline
def _log2_bits(bits: int) -> float:
    """log2 of a positive normal float32 given its bits: exponent + log2(mantissa), |error| < 1e-6."""
    e = np.float32((bits >> 23) - 127)
    mnt = np.float32(bits & 0x7FFFFF) * MANTISSA + F1
    big = mnt > SQRT2  # centre the mantissa on 1 so that the series below converges fast
    mnt = HALF * mnt if big else mnt
    e = e + F1 if big else e
    s = (mnt - F1) / (mnt + F1)  # ln(m) = 2 atanh(s), |s| < 0.172
    s2 = s * s
    p = np.float32(0.4) + s2 * (np.float32(2 / 7) + s2 * np.float32(2 / 9))
    return e + s * (np.float32(2.0) + s2 * (np.float32(2 / 3) + s2 * p)) * INV_LN2


@_inline
def _exp2_bits(y: float) -> int:
    """The bits of the float32 2**y for y in [-126, 0]: 2**floor(y) in the exponent, 2**frac by Taylor."""
    y = max(y, np.float32(-126.0))
    k = np.floor(y)
    f = (y - k) * LN2
    p = np.float32(1 / 24) + f * (np.float32(1 / 120) + f * (np.float32(1 / 720) + f * np.float32(1 / 5040)))
    p = F1 + f * (F1 + f * (HALF + f * (np.float32(1 / 6) + f * p)))
    # a mantissa that rounds up to 2**23 carries into the exponent, which is still the right value
    return ((np.int32(k) + np.int32(127)) << np.int32(23)) + np.int32((p - F1) * np.float32(8388608.0) + HALF)


@_inline
def _exp_neg(z: float) -> float:
    """exp(-z) for z >= 0 as (e^u)^32, u = -min(z, 24)/32 in [-0.75, 0]; relative error ~1e-6."""
    u = -min(z, NLM_ZMAX) * np.float32(1 / 32)
    p = np.float32(1 / 120) + u * (np.float32(1 / 720) + u * (np.float32(1 / 5040) + u * np.float32(1 / 40320)))
    p = F1 + u * (F1 + u * (HALF + u * (np.float32(1 / 6) + u * (np.float32(1 / 24) + u * p))))
    p = p * p
    p = p * p
    p = p * p
    p = p * p
    p = p * p
    return p if z < NLM_ZMAX else F0


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
def _gamma(bits: np.ndarray, g: np.ndarray, out_bits: np.ndarray) -> None:
    """out = max(x, EPS) ** g clipped, as 2**(g log2 x) on float32 bits (x clamped to [EPS, 1])."""
    for b in nb.prange(bits.shape[0]):
        gb = g[b]
        for i in range(bits.shape[1]):
            out_bits[b, i] = _exp2_bits(gb * _log2_bits(min(max(bits[b, i], BITS_EPS), BITS_ONE)))


@_jit
def _piecewise(x: np.ndarray, slopes: np.ndarray, out: np.ndarray) -> None:
    """The tone curve as a sum of ramps, sum_k slope_k * clip(n x - k, 0, 1): no table gather, and each
    ramp is one unit-stride pass over an L1-sized chunk, so every loop vectorises. Equal to the reference's
    knot[seg] + (n x - seg) * slope[seg]."""
    n = slopes.shape[1]
    fn = np.float32(n)
    for b in nb.prange(x.shape[0]):
        sb, xb, ob = slopes[b], x[b], out[b]
        t = np.empty(CHUNK, np.float32)
        acc = np.empty(CHUNK, np.float32)
        for start in range(0, xb.shape[0], CHUNK):
            m = min(CHUNK, xb.shape[0] - start)
            for i in range(m):
                t[i] = _clip(xb[start + i]) * fn
                acc[i] = F0
            for k in range(n):
                s, fk = sb[k], np.float32(k)
                for i in range(m):
                    acc[i] += s * _clip(t[i] - fk)
            for i in range(m):
                ob[start + i] = _clip(acc[i])


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


@_jit
def _nlm(grey_pad, planes_pad, inv_h, search, rows_per_job, out):  # noqa: ANN001
    """Grey-guided NLM with 5x5 patches on colour planes. Jobs are (image, block of rows); a job loops over
    the search offsets, forms the squared grey difference of its rows plus a 2-pixel halo (edge-replicated
    like the reference's box filter), box-filters it separably and accumulates the weights exp(-mean / h).
    Every inner loop is unit-stride so that it vectorises."""
    bsz, h, w = out.shape[0], out.shape[2], out.shape[3]
    blocks = (h + rows_per_job - 1) // rows_per_job
    for job in nb.prange(bsz * blocks):
        b, blk = job // blocks, job % blocks
        y0 = blk * rows_per_job
        nrows = min(y0 + rows_per_job, h) - y0
        scale = inv_h[b] * np.float32(1 / 25)
        diff = np.empty(w + 4, np.float32)
        rowsum = np.empty((nrows + 4, w), np.float32)
        wt = np.empty(w, np.float32)
        acc = np.zeros((3, nrows, w), np.float32)
        wsum = np.zeros((nrows, w), np.float32)
        for dy in range(2 * search + 1):
            for dx in range(2 * search + 1):
                for r in range(nrows + 4):
                    yy = min(max(y0 - 2 + r, 0), h - 1)
                    g_c, g_o = grey_pad[b, yy + search, search:], grey_pad[b, yy + dy, dx:]
                    for xx in range(w):
                        v = g_c[xx] - g_o[xx]
                        diff[xx + 2] = v * v
                    diff[0], diff[1], diff[w + 2], diff[w + 3] = diff[2], diff[2], diff[w + 1], diff[w + 1]
                    rs = rowsum[r]
                    for xx in range(w):
                        rs[xx] = diff[xx] + diff[xx + 1] + diff[xx + 2] + diff[xx + 3] + diff[xx + 4]
                for r in range(nrows):
                    r0, r1, r2, r3, r4 = rowsum[r], rowsum[r + 1], rowsum[r + 2], rowsum[r + 3], rowsum[r + 4]
                    ws = wsum[r]
                    for xx in range(w):
                        wt[xx] = _exp_neg((r0[xx] + r1[xx] + r2[xx] + r3[xx] + r4[xx]) * scale)
                        ws[xx] += wt[xx]
                    for c in range(3):
                        src, ac = planes_pad[b, c, y0 + r + dy, dx:], acc[c, r]
                        for xx in range(w):
                            ac[xx] += wt[xx] * src[xx]
        for c in range(3):
            for r in range(nrows):
                dst, ac, ws = out[b, c, y0 + r], acc[c, r], wsum[r]
                for xx in range(w):
                    dst[xx] = _clip(ac[xx] / ws[xx])  # ws >= 1: the centre offset always has weight 1


def _flat(img: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(img, dtype=np.float32).reshape(img.shape[0], -1)


def _f32(a: Any) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float32)


def _per_pixel(kernel: Callable[..., None], img: np.ndarray, *constants: np.ndarray) -> np.ndarray:
    """Run a flat-row kernel `kernel(x, *constants, out)` on a (B, H, W, 3) batch."""
    x = _flat(img)
    out = np.empty_like(x)
    kernel(x, *constants, out)
    return out.reshape(img.shape)


def exposure(img: np.ndarray, params: np.ndarray, xp: ModuleType = np) -> np.ndarray:
    return _per_pixel(_scale_channels, img, _f32(np.repeat(np.exp2(_f32(params[:, :1])), 3, axis=1)))


def white_balance(img: np.ndarray, params: np.ndarray, xp: ModuleType = np) -> np.ndarray:
    return _per_pixel(_scale_channels, img, _f32(m.wb_gains(_f32(params))))


def ccm(img: np.ndarray, params: np.ndarray, xp: ModuleType = np) -> np.ndarray:
    return _per_pixel(_matrix, img, _f32(m.ccm_matrix(_f32(params), np)))


def gamma(img: np.ndarray, params: np.ndarray, xp: ModuleType = np) -> np.ndarray:
    x = _flat(img)
    out = np.empty_like(x)
    _gamma(x.view(np.int32), _f32(params[:, 0]), out.view(np.int32))  # the kernel reads and writes bits
    return out.reshape(img.shape)


def tone_curve(img: np.ndarray, params: np.ndarray, xp: ModuleType = np) -> np.ndarray:
    return _per_pixel(_piecewise, img, _f32(m.tone_knots(_f32(params), np)[1]))


def contrast(img: np.ndarray, params: np.ndarray, xp: ModuleType = np) -> np.ndarray:
    return _per_pixel(_contrast, img, _f32(params[:, 0]))


def saturation_plus(img: np.ndarray, params: np.ndarray, xp: ModuleType = np) -> np.ndarray:
    return _per_pixel(_saturation, img, _f32(params[:, 0]))


def desaturation(img: np.ndarray, params: np.ndarray, xp: ModuleType = np) -> np.ndarray:
    return _per_pixel(_desaturation, img, _f32(params[:, 0]))


def sharpen(img: np.ndarray, params: np.ndarray, xp: ModuleType = np) -> np.ndarray:
    b, h, w, _ = img.shape
    padded = np.pad(_f32(img), ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge").reshape(b, h + 2, (w + 2) * 3)
    out = np.empty((b, h, w * 3), np.float32)
    _sharpen(padded, _f32(params[:, 0]), out)
    return out.reshape(img.shape)


def denoise(img: np.ndarray, params: np.ndarray, xp: ModuleType = np, search: int = 5, patch: int = 2) -> np.ndarray:
    if patch != 2:
        return m.denoise(img, params, xp, search, patch)  # the kernel's box filter is written for 5x5
    x = _f32(img)
    pad = ((0, 0), (search, search), (search, search))
    grey_pad = _f32(np.pad(m.luminance(x, np), pad, mode="reflect"))
    planes_pad = _f32(np.pad(x.transpose(0, 3, 1, 2), ((0, 0), (0, 0), *pad[1:]), mode="reflect"))
    out = np.empty((x.shape[0], 3, x.shape[1], x.shape[2]), np.float32)
    # enough row blocks that every thread has work even for one image; each block recomputes a 4-row halo
    rows = max(16, -(-x.shape[1] * x.shape[0] // (4 * nb.get_num_threads())))
    _nlm(grey_pad, planes_pad, _f32(1.0 / params[:, 0]), search, min(rows, x.shape[1]), out)
    return np.ascontiguousarray(out.transpose(0, 2, 3, 1))


def _cpu_share(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Run `fn` on this process's CPU share: Ray gives each worker its share in OMP_NUM_THREADS, while
    Numba's pool would otherwise use every core of the node and oversubscribe it when several EnvRunners
    share the node. Numba's setting is per calling thread, so it is applied on every call."""

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        share = os.environ.get("OMP_NUM_THREADS", "")
        if share.isdigit():
            nb.set_num_threads(max(1, min(int(share), nb.config.NUMBA_NUM_THREADS)))
        return fn(*args, **kwargs)

    return run


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
