"""ISP throughput: images/s per module and for the full pipeline, GB/s of point-wise modules vs memcpy,
for the fused kernels and the reference array code on every backend present."""

from __future__ import annotations

import inspect
import platform
import time
from collections.abc import Callable
from types import ModuleType
from typing import Any

import numpy as np

from posisp_dist.isp import fast_cpu
from posisp_dist.isp.executor import ISPExecutor
from posisp_dist.isp.kernels import implementation
from posisp_dist.isp.registry import DEFAULT_REGISTRY, Registry
from posisp_dist.isp.xp import cupy_available, get_xp

POINTWISE = ("exposure", "gamma", "ccm", "tone", "contrast", "saturation", "desaturation", "white_balance")


def _timeit(fn: Callable[[], Any], xp: ModuleType, min_time: float = 0.5, max_reps: int = 50) -> float:
    """Median seconds per call after one warm-up call (synchronising the GPU for CuPy)."""
    sync = (lambda: xp.cuda.Stream.null.synchronize()) if xp.__name__ == "cupy" else (lambda: None)
    fn()
    sync()
    times: list[float] = []
    while len(times) < max_reps and (sum(times) < min_time or len(times) < 3):
        t = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def bench_size(
    xp: ModuleType,
    size: int,
    batch: int,
    registry: Registry = DEFAULT_REGISTRY,
    min_time: float = 0.5,
    kernels: tuple[str, ...] = ("fast", "reference"),
) -> list[dict[str, Any]]:
    """memcpy, then every module and the full 10-module pipeline on one (batch, size, size, 3) input."""
    img = xp.asarray(np.random.default_rng(0).random((batch, size, size, 3), dtype=np.float32))
    base = {"backend": xp.__name__, "size": size, "batch": batch}
    dst = xp.empty_like(img)
    copies = {"memcpy": lambda: xp.copyto(dst, img)}  # one thread on the CPU
    if xp.__name__ == "numpy":
        copies["memcpy_parallel"] = lambda: fast_cpu.copy(img, dst)
    rows = []
    for op, copy in copies.items():
        t = _timeit(copy, xp, min_time)
        rows.append({**base, "op": op, "seconds": t, "images_per_s": batch / t, "gb_per_s": 2 * img.nbytes / t / 1e9})
    copy_gbs = max(r["gb_per_s"] for r in rows)  # the copy bandwidth: the faster of the two copies
    mid = xp.asarray(np.tile((registry.vector("low") + registry.vector("high")) / 2, (batch, 1)).astype(np.float32))
    tokens = np.tile(np.arange(registry.n_modules), (batch, 1))
    params = np.full((batch, registry.n_params), 0.5, np.float32)
    for kind in kernels:
        for i, spec in enumerate(registry.modules):
            fn, p = implementation(spec, xp, kind), mid[:, registry.param_slice(i)]
            t = _timeit(lambda fn=fn, p=p: fn(img, p, xp), xp, min_time)
            row = {**base, "kernels": kind, "op": spec.name, "seconds": t, "images_per_s": batch / t}
            if spec.name in POINTWISE:
                # bandwidth of the kernel alone where it can write into a buffer: on the CPU a fresh output
                # over 32 MB comes from mmap, and its page faults would be timed too (CuPy allocates from a pool)
                into = "out" in inspect.signature(fn).parameters
                if into:
                    t = _timeit(lambda fn=fn, p=p: fn(img, p, xp, out=dst), xp, min_time)
                row["gb_per_s"] = 2 * img.nbytes / t / 1e9
                row["fraction_of_memcpy"] = row["gb_per_s"] / copy_gbs
                row["gb_measured"] = "into a buffer" if into else "allocating its output"
            rows.append(row)
        ex = ISPExecutor(registry, xp, kind)
        t = _timeit(lambda ex=ex: ex.run(img, tokens, params), xp, min_time)
        rows.append({**base, "kernels": kind, "op": "full_pipeline", "seconds": t, "images_per_s": batch / t})
    return rows


def run(
    sizes: tuple[int, ...] = (256, 512),
    batch: int = 32,
    min_time: float = 0.5,
    kernels: tuple[str, ...] = ("fast", "reference"),
) -> dict[str, Any]:
    backends = [get_xp("numpy")] + ([get_xp("cupy")] if cupy_available() else [])
    rows = [
        r for xp in backends for size in sizes for r in bench_size(xp, size, batch, min_time=min_time, kernels=kernels)
    ]
    return {**machine_info(), "cupy": "present" if len(backends) > 1 else "not available", "rows": rows}


def machine_info() -> dict[str, Any]:
    import os

    return {
        "machine": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "numpy": np.__version__,
    }


def format_rows(result: dict[str, Any]) -> str:
    lines = [
        "| backend | kernels | size | batch | op | images/s | GB/s | % of memcpy |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        gbs = f"{r['gb_per_s']:.2f}" if "gb_per_s" in r else ""
        gbs += " (alloc)" if r.get("gb_measured") == "allocating its output" else ""
        frac = f"{100 * r['fraction_of_memcpy']:.0f}%" if "fraction_of_memcpy" in r else ""
        lines.append(
            f"| {r['backend']} | {r.get('kernels', '')} | {r['size']} | {r['batch']} | {r['op']} "
            f"| {r['images_per_s']:.1f} | {gbs} | {frac} |"
        )
    return "\n".join(lines)
