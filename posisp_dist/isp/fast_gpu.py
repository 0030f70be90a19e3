"""Fused CUDA kernels (CuPy) for the point-wise ISP modules: one read and one write of the batch per module.

On CuPy the reference functions are composed array ops, each its own launch and its own pass over the
batch (contrast is about ten). Here each point-wise module is one `cupy.ElementwiseKernel` over pixels,
with the per-image constants (gains, matrices, tone knots) made by the reference's own helpers. Sharpen
and denoise keep their reference code.

A kernel is its per-pixel body in C, shared by two compilers: NVRTC builds it for the GPU, and the tests
build the same text with the host's C compiler (and with nvcc where installed) to check every body against
its reference function on machines without a GPU. In a body, `i` is the pixel, `x` and `y` the flat input
and output (3 floats a pixel), `k` the flat (B, nk) constants and `hw` the pixels per image.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from posisp_dist.isp import modules as m

PREAMBLE = rf"""
#ifdef __CUDACC__
#define POSISP_FN __device__ __forceinline__
#else
#include <math.h>
#define POSISP_FN static inline
#endif
#define POSISP_EPS {m.EPS!r}f
POSISP_FN float clip01(float v) {{ return fminf(fmaxf(v, 0.0f), 1.0f); }}
POSISP_FN float luma(float r, float g, float b) {{
    return {m.LUMA[0]!r}f * r + {m.LUMA[1]!r}f * g + {m.LUMA[2]!r}f * b;
}}
#define STORE3(R, G, B) y[3 * i] = clip01(R); y[3 * i + 1] = clip01(G); y[3 * i + 2] = clip01(B)
"""

_PIXEL = """
const long long o = (i / hw) * nk;  /* this image's constants */
const float r = x[3 * i], g = x[3 * i + 1], b = x[3 * i + 2];
"""

BODIES: dict[str, str] = {
    "scale": "STORE3(r * k[o], g * k[o + 1], b * k[o + 2]);",
    "matrix": """
STORE3(k[o] * r + k[o + 1] * g + k[o + 2] * b,
       k[o + 3] * r + k[o + 4] * g + k[o + 5] * b,
       k[o + 6] * r + k[o + 7] * g + k[o + 8] * b);""",
    "gamma": """
const float e = k[o];
STORE3(powf(fmaxf(r, POSISP_EPS), e), powf(fmaxf(g, POSISP_EPS), e), powf(fmaxf(b, POSISP_EPS), e));""",
    "tone": """
const int n = (int)((nk - 1) / 2);  /* n + 1 knots, then n slopes */
const float v[3] = {r, g, b};
for (int c = 0; c < 3; ++c) {
    const float t = clip01(v[c]) * n;
    const int f = (int)floorf(t);
    const int s = f < n - 1 ? f : n - 1;  /* x == 1 belongs to the last segment */
    y[3 * i + c] = clip01(k[o + s] + (t - s) * k[o + n + 1 + s]);
}""",
    "contrast": """
const float a = k[o];
const float lum = clip01(luma(r, g, b));
const float f = (0.5f - 0.5f * cosf(3.14159265358979f * lum)) / (lum + POSISP_EPS);
STORE3(r + a * (r * f - r), g + a * (g * f - g), b + a * (b * f - b));""",
    "saturation": """
const float a = k[o];
const float v = fmaxf(r, fmaxf(g, b));
const float s = (v - fminf(r, fminf(g, b))) / fmaxf(v, POSISP_EPS);
const float f = (s + (1.0f - s) * (0.5f - fabsf(0.5f - v)) * 0.8f) / fmaxf(s, POSISP_EPS);
STORE3(r + a * ((v - (v - r) * f) - r), g + a * ((v - (v - g) * f) - g), b + a * ((v - (v - b) * f) - b));""",
    "desaturation": """
const float a = k[o], lum = luma(r, g, b);
STORE3(r + a * (lum - r), g + a * (lum - g), b + a * (lum - b));""",
}


def source(body: str) -> str:
    """The full per-pixel code of a body: the pixel's channels and constants, then the body."""
    return _PIXEL + BODIES[body]


@dataclass(frozen=True)
class PointwiseKernel:
    """A module as a body and its per-image constants, (B, k) params -> (B, nk) with namespace xp."""

    body: str
    constants: Callable[[Any, ModuleType], Any]


def _first(p: Any, xp: ModuleType) -> Any:
    return p[:, :1]


POINTWISE: dict[Callable[..., Any], PointwiseKernel] = {
    m.exposure: PointwiseKernel("scale", lambda p, xp: xp.repeat(xp.exp2(p[:, :1]), 3, axis=1)),
    m.white_balance: PointwiseKernel("scale", lambda p, xp: m.wb_gains(p)),
    m.ccm: PointwiseKernel("matrix", lambda p, xp: m.ccm_matrix(p, xp).reshape(-1, 9)),
    m.gamma: PointwiseKernel("gamma", _first),
    m.tone_curve: PointwiseKernel("tone", lambda p, xp: xp.concatenate(m.tone_knots(p, xp), axis=1)),
    m.contrast: PointwiseKernel("contrast", _first),
    m.saturation_plus: PointwiseKernel("saturation", _first),
    m.desaturation: PointwiseKernel("desaturation", _first),
}


@functools.cache
def _elementwise(body: str) -> Any:
    import cupy

    return cupy.ElementwiseKernel(
        "raw float32 x, raw float32 k, int64 hw, int64 nk",
        "raw float32 y",
        source(body),
        f"posisp_{body}",
        preamble=PREAMBLE,
    )


def run(kernel: PointwiseKernel, img: Any, params: Any, xp: ModuleType) -> Any:
    """One launch over every pixel of the (B, H, W, 3) CuPy batch `img`."""
    x = xp.ascontiguousarray(img, dtype=xp.float32)
    k = xp.ascontiguousarray(kernel.constants(xp.asarray(params, dtype=xp.float32), xp), dtype=xp.float32)
    y = xp.empty_like(x)
    bsz, h, w, _ = x.shape
    _elementwise(kernel.body)(x.reshape(-1), k.reshape(-1), h * w, k.shape[1], y.reshape(-1), size=bsz * h * w)
    return y


# reference function -> fused GPU kernel, dispatched by identity like the CPU kernels
KERNELS: dict[Callable[..., Any], Callable[..., Any]] = {
    fn: functools.wraps(fn)(functools.partial(run, kernel)) for fn, kernel in POINTWISE.items()
}
