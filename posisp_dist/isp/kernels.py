"""Which implementation runs a module: its reference function, or a fused kernel for the backend.

A module's own kernels (`ModuleSpec.kernels`, by array namespace name: how an extension module of
`isp/extra/` brings one) come first. The paper's ten are looked up by the identity of their reference
function, so a module registered under an existing name with its own function keeps its own code. NumPy's
kernels are the Numba ones in `fast_cpu.py`, CuPy's the CUDA ones in `fast_gpu.py` (point-wise modules;
sharpen and denoise run their reference array code on the GPU). Without Numba, or for
`kernels="reference"`, every module runs its reference function.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from functools import cache
from types import ModuleType
from typing import Any

from posisp_dist.isp.registry import ModuleSpec

KERNEL_CHOICES = ("fast", "reference")


@cache
def _cpu_kernels() -> dict[Callable[..., Any], Callable[..., Any]]:
    try:
        from posisp_dist.isp.fast_cpu import KERNELS
    except ImportError as e:  # numba missing or broken: stay correct, say why it is slower
        warnings.warn(f"fused CPU kernels unavailable ({e}); ISP modules run their NumPy reference code", stacklevel=2)
        return {}
    return KERNELS


@cache
def _gpu_kernels() -> dict[Callable[..., Any], Callable[..., Any]]:
    from posisp_dist.isp.fast_gpu import KERNELS  # CuPy itself is imported at the first launch

    return KERNELS


def implementation(spec: ModuleSpec, xp: ModuleType, kernels: str = "fast") -> Callable[..., Any]:
    """The function that runs module `spec` on namespace `xp`."""
    if kernels not in KERNEL_CHOICES:
        raise ValueError(f"kernels must be one of {KERNEL_CHOICES}, got {kernels!r}")
    fn = spec.fn
    if kernels == "fast" and xp.__name__ in spec.kernels:
        return spec.kernels[xp.__name__]
    if kernels == "fast" and xp.__name__ == "numpy":
        return _cpu_kernels().get(fn, fn)
    if kernels == "fast" and xp.__name__ == "cupy":
        return _gpu_kernels().get(fn, fn)
    return fn
