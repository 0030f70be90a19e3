"""Array-namespace helpers: the ISP runs on NumPy (CPU) or CuPy (GPU) through one `xp` argument."""

from __future__ import annotations

from types import ModuleType
from typing import Any

import numpy as np


def cupy_available() -> bool:
    """True when CuPy imports and sees at least one CUDA device."""
    try:
        import cupy  # noqa: F401

        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:  # ImportError, or CUDA driver errors on GPU-less hosts
        return False


def get_xp(backend: str = "numpy") -> ModuleType:
    """Return the array namespace for `backend` ('numpy', 'cupy' or 'auto')."""
    if backend == "auto":
        backend = "cupy" if cupy_available() else "numpy"
    if backend == "numpy":
        return np
    if backend == "cupy":
        if not cupy_available():
            raise RuntimeError("backend 'cupy' requested but CuPy is not installed or no CUDA device is visible")
        import cupy

        return cupy
    raise ValueError(f"unknown array backend {backend!r}; expected 'numpy', 'cupy' or 'auto'")


def array_module(x: Any) -> ModuleType:
    """The namespace (numpy or cupy) that owns array `x`."""
    if type(x).__module__.startswith("cupy"):
        import cupy

        return cupy
    return np


def to_numpy(x: Any) -> np.ndarray:
    """Copy an xp array to host memory (no-op for NumPy)."""
    return x.get() if hasattr(x, "get") and not isinstance(x, np.ndarray) else np.asarray(x)
