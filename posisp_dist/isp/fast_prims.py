"""Shared pieces of the fused CPU kernels (`fast_cpu.py`, `fast_nlm.py`): Numba's settings, float32 constants,
the loop-friendly transcendentals (log2 and exp2 from a float's exponent bits and a fitted polynomial of its
mantissa, exp(-z) = 2**(-z log2 e)), array helpers and the per-process CPU share."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
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
LOG2E = np.float32(np.log2(np.e))
NLM_ZMAX = np.float32(24.0)  # exp(-24) = 4e-11: beyond it an NLM weight is 0 next to the centre's 1

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


def _flat(img: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(img, dtype=np.float32).reshape(img.shape[0], -1)


def _f32(a: Any) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float32)


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
