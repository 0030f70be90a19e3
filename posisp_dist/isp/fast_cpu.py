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

import functools
import os
from collections.abc import Callable
from types import ModuleType
from typing import Any

from posisp_dist.isp import numba_env  # noqa: F401  (Numba's process settings: before Numba is imported)

# isort: split

import numba as nb
import numpy as np
from llvmlite import ir
from numba.core import types
from numba.extending import intrinsic

from posisp_dist.isp import modules as m

F0, F1, HALF, EPS = np.float32(0.0), np.float32(1.0), np.float32(0.5), np.float32(m.EPS)
LR, LG, LB = (np.float32(c) for c in m.LUMA)
Out = np.ndarray | None  # the point-wise modules' optional output buffer, see `_per_pixel`
TONE_SEGMENTS = 8  # the tone curve's segments, a compile-time constant so that the kernel's ramps unroll
LOG2E = np.float32(np.log2(np.e))
NLM_ZMAX = np.float32(24.0)  # exp(-24) = 4e-11: beyond it an NLM weight is 0 next to the centre's 1

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

_OPTS = {"fastmath": True, "error_model": "numpy", "cache": True}
_jit = nb.njit(parallel=True, nogil=True, **_OPTS)
_inline = nb.njit(inline="always", **_OPTS)


@_inline
def _clip(v: float) -> float:
    return min(max(v, F0), F1)


def _fit(fn: Callable[[np.ndarray], np.ndarray], lo: float, hi: float, degree: int) -> tuple[np.float32, ...]:
    """Power-series coefficients (constant first) of the least-squares Chebyshev fit of fn on [lo, hi]."""
    u = np.linspace(lo, hi, 4096)
    fit = np.polynomial.Chebyshev.fit(u, fn(u), degree, domain=[lo, hi])
    power = fit.convert(kind=np.polynomial.Polynomial, domain=[lo, hi], window=[lo, hi])  # coefficients in u
    return tuple(np.float32(c) for c in power.coef)


# log2(m) = u * L(u), u = m - 1, m in [sqrt(1/2), sqrt(2)), and exp2(f) = E(f), f in [0, 1): fitted once at
# import (Numba freezes them as constants). In float32 the tests see |log2 error| < 3e-6 (mostly the rounding
# of e + u L(u) for |e| near 20) and a relative exp2 error < 6e-7 (a few ulps).
_U_LO, _U_HI = float(np.sqrt(0.5)) - 1, float(np.sqrt(2.0)) - 1
L0, L1, L2, L3, L4, L5, L6 = _fit(lambda u: np.log2(1 + u) / u, _U_LO, _U_HI, 6)  # the grid skips u = 0
E0, E1, E2, E3, E4, E5 = _fit(np.exp2, 0.0, 1.0, 5)
I32, F32 = ir.IntType(32), ir.FloatType()
SQRT_HALF_BITS = int(np.float32(np.sqrt(0.5)).view(np.int32))


# Two bit-level helpers as LLVM IR: Numba widens integer arithmetic to int64 and has no scalar bitcast, and
# either stops the float32 loops from vectorising at full width. In IR both are a few 32-bit lane operations.
@intrinsic
def _frexp_centred(typingctx, x):  # noqa: ANN001
    """x -> (e, m), x = m * 2**e with m in [sqrt(1/2), sqrt(2)), for a positive normal float32."""

    def codegen(context, builder, signature, args):  # noqa: ANN001
        off = ir.Constant(I32, SQRT_HALF_BITS)
        t = builder.sub(builder.bitcast(args[0], I32), off)  # subtracting sqrt(1/2)'s bits centres m on 1
        e = builder.sitofp(builder.ashr(t, ir.Constant(I32, 23)), F32)
        mnt = builder.bitcast(builder.add(builder.and_(t, ir.Constant(I32, 0x7FFFFF)), off), F32)
        return context.make_tuple(builder, signature.return_type, [e, mnt])

    return types.UniTuple(types.float32, 2)(types.float32), codegen


@intrinsic
def _ldexp(typingctx, p, k):  # noqa: ANN001
    """p * 2**k for an integral float32 k, by adding k to p's exponent bits (the result must stay normal)."""

    def codegen(context, builder, signature, args):  # noqa: ANN001
        shift = builder.shl(builder.fptosi(args[1], I32), ir.Constant(I32, 23))
        return builder.bitcast(builder.add(builder.bitcast(args[0], I32), shift), F32)

    return types.float32(types.float32, types.float32), codegen


@_inline
def _log2(x: float) -> float:
    """log2 of a positive normal float32, |error| < 3e-6."""
    e, mnt = _frexp_centred(x)
    u = mnt - F1
    u2 = u * u  # Estrin's scheme: a shorter dependency chain than Horner's
    p = (L0 + L1 * u) + u2 * (L2 + L3 * u) + u2 * u2 * ((L4 + L5 * u) + u2 * L6)
    return e + u * p


@_inline
def _exp2(y: float) -> float:
    """2**y for y >= -126 (smaller y is clamped there), relative error < 6e-7."""
    y = max(y, np.float32(-126.0))
    k = np.floor(y)
    f = y - k
    f2 = f * f
    return _ldexp((E0 + E1 * f) + f2 * (E2 + E3 * f) + f2 * f2 * (E4 + E5 * f), k)


@_inline
def _exp_neg(z: float) -> float:
    """exp(-z) for z >= 0 as 2**(-z log2 e), relative error < 6e-7; 0 from z = 24 on."""
    return _exp2(-min(z, NLM_ZMAX) * LOG2E) if z < NLM_ZMAX else F0


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


@_inline
def _patch_sums(grey_pad, b, y0, nrows, dy, dx, search, diff, rowsum):  # noqa: ANN001
    """rowsum[r] = the 5-wide sums of the squared grey difference to offset (dy, dx) for rows y0 - 2 ..
    y0 + nrows + 1 (edge-replicated, like the reference's box filter); summing 5 of them gives a 5x5 patch."""
    h, w = grey_pad.shape[1] - 2 * search, grey_pad.shape[2] - 2 * search
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


@_inline
def _nlm_job(job, blocks, rows_per_job, h, w, inv_h):  # noqa: ANN001
    """Job `job` of the NLM kernels: its image, first row, row count, 1 / (25 h), and its scratch rows."""
    b, y0 = job // blocks, (job % blocks) * rows_per_job
    nrows = min(y0 + rows_per_job, h) - y0
    scratch = np.empty(w + 4, np.float32), np.empty((nrows + 4, w), np.float32), np.empty(w, np.float32)
    return b, y0, nrows, inv_h[b] * np.float32(1 / 25), scratch[0], scratch[1], scratch[2]


@_jit
def _nlm(grey_pad, planes_pad, inv_h, search, rows_per_job, out):  # noqa: ANN001
    """Grey-guided NLM with 5x5 patches on colour planes. Jobs are (image, block of rows); a job loops over
    the search offsets, forms the squared grey difference of its rows plus a 2-pixel halo, box-filters it
    separably (`_patch_sums`) and accumulates the weights exp(-mean / h). Every inner loop is unit-stride
    so that it vectorises."""
    bsz, h, w = out.shape[0], out.shape[2], out.shape[3]
    blocks = (h + rows_per_job - 1) // rows_per_job
    for job in nb.prange(bsz * blocks):
        b, y0, nrows, scale, diff, rowsum, wt = _nlm_job(job, blocks, rows_per_job, h, w, inv_h)
        acc, wsum = np.zeros((3, nrows, w), np.float32), np.zeros((nrows, w), np.float32)
        for dy in range(2 * search + 1):
            for dx in range(2 * search + 1):
                _patch_sums(grey_pad, b, y0, nrows, dy, dx, search, diff, rowsum)
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


@_jit
def _nlm_strengths(grey_pad, planes_pad, inv_h, search, rows_per_job, out):  # noqa: ANN001
    """`_nlm` at K strengths per image in one pass (`inv_h` (B, K), `out` (K, B, 3, H, W)): the patch distances
    are computed once and weighted K times, each strength with `_nlm`'s arithmetic in `_nlm`'s order, so each
    output equals `_nlm`'s at that strength bit for bit."""
    bsz, h, w, k_n = out.shape[1], out.shape[3], out.shape[4], out.shape[0]
    blocks = (h + rows_per_job - 1) // rows_per_job
    for job in nb.prange(bsz * blocks):
        b, y0, nrows, _, diff, rowsum, wt = _nlm_job(job, blocks, rows_per_job, h, w, inv_h[:, 0])
        acc, wsum = np.zeros((k_n, 3, nrows, w), np.float32), np.zeros((k_n, nrows, w), np.float32)
        for dy in range(2 * search + 1):
            for dx in range(2 * search + 1):
                _patch_sums(grey_pad, b, y0, nrows, dy, dx, search, diff, rowsum)
                for r in range(nrows):
                    r0, r1, r2, r3, r4 = rowsum[r], rowsum[r + 1], rowsum[r + 2], rowsum[r + 3], rowsum[r + 4]
                    for k in range(k_n):
                        scale, ws = inv_h[b, k] * np.float32(1 / 25), wsum[k, r]
                        for xx in range(w):
                            wt[xx] = _exp_neg((r0[xx] + r1[xx] + r2[xx] + r3[xx] + r4[xx]) * scale)
                            ws[xx] += wt[xx]
                        for c in range(3):
                            src, ac = planes_pad[b, c, y0 + r + dy, dx:], acc[k, c, r]
                            for xx in range(w):
                                ac[xx] += wt[xx] * src[xx]
        for k in range(k_n):
            for c in range(3):
                for r in range(nrows):
                    dst, ac, ws = out[k, b, c, y0 + r], acc[k, c, r], wsum[k, r]
                    for xx in range(w):
                        dst[xx] = _clip(ac[xx] / ws[xx])


def _flat(img: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(img, dtype=np.float32).reshape(img.shape[0], -1)


def _f32(a: Any) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float32)


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


def denoise(img: np.ndarray, params: np.ndarray, xp: ModuleType = np, search: int = 5, patch: int = 2) -> np.ndarray:
    if patch != 2:
        return m.denoise(img, params, xp, search, patch)  # the kernel's box filter is written for 5x5
    return np.ascontiguousarray(_denoise_planes(img, params[:, :1], search)[0].transpose(0, 2, 3, 1))


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


@_cpu_share
def denoise_strengths(img: np.ndarray, strengths: np.ndarray, search: int = 5) -> np.ndarray:
    """`denoise` of (B, H, W, 3) at K strengths per image, `strengths` (B, K) -> (K, B, 3, H, W) planes, in one
    kernel pass; each equal, bit for bit, to `denoise` at that strength (the NLM twin's value and difference)."""
    return _denoise_planes(img, strengths, search)


def _denoise_planes(img: np.ndarray, strengths: np.ndarray, search: int) -> np.ndarray:
    x = _f32(img)
    pad = ((0, 0), (search, search), (search, search))
    grey_pad = _f32(np.pad(m.luminance(x, np), pad, mode="reflect"))
    planes_pad = _f32(np.pad(x.transpose(0, 3, 1, 2), ((0, 0), (0, 0), *pad[1:]), mode="reflect"))
    inv_h = _f32(1.0 / np.asarray(strengths))  # as the kernel always did: one rounding to float32
    out = np.empty((inv_h.shape[1], x.shape[0], 3, x.shape[1], x.shape[2]), np.float32)
    # enough row blocks that every thread has work even for one image; each block recomputes a 4-row halo
    rows = min(max(16, -(-x.shape[1] * x.shape[0] // (4 * nb.get_num_threads()))), x.shape[1])
    if inv_h.shape[1] == 1:
        _nlm(grey_pad, planes_pad, inv_h[:, 0], search, rows, out[0])
    else:
        _nlm_strengths(grey_pad, planes_pad, inv_h, search, rows, out)
    return out


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
