"""Our executor against the torch peer on the same inputs: the 10-module pipeline executed once
(POS-ISP), and AdaptiveISP's K-step execution that runs every module at every step."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from posisp_dist.benchmarks import torch_peer
from posisp_dist.benchmarks.isp import _timeit, machine_info
from posisp_dist.isp.executor import ISPExecutor
from posisp_dist.isp.registry import DEFAULT_REGISTRY, Registry


def _ours_adaptiveisp(ex: ISPExecutor, img: np.ndarray, phys: np.ndarray, chosen: list[int]) -> np.ndarray:
    """K steps; at each, the whole batch goes through every module's kernel and one output is kept."""
    x = img
    for keep in chosen:
        outs = [fn(x, phys[:, ex.registry.param_slice(i)], np) for i, fn in enumerate(ex.impls)]
        x = outs[keep]
    return x


def bench_peer(
    size: int, batch: int, steps: int = 5, min_time: float = 0.5, registry: Registry = DEFAULT_REGISTRY
) -> list[dict[str, Any]]:
    """images/s of: our fused kernels, our reference NumPy code, the torch peer; pipeline and AdaptiveISP."""
    rng = np.random.default_rng(0)
    img = rng.random((batch, size, size, 3), dtype=np.float32)
    params = np.full((batch, registry.n_params), 0.5, np.float32)
    phys = np.asarray(registry.to_physical(params), np.float32)
    tokens = np.tile(np.arange(registry.n_modules), (batch, 1))
    chosen = [int(c) for c in rng.integers(0, registry.n_modules, steps)]
    nchw = torch_peer.to_nchw(img)
    names = list(registry.names)
    work = {
        "pipeline": {
            "posisp fused (numba)": lambda: ISPExecutor(registry, np, "fast").run(img, tokens, params),
            "posisp reference (numpy)": lambda: ISPExecutor(registry, np, "reference").run(img, tokens, params),
            "torch peer": lambda: torch_peer.run_sequence(nchw, names, phys, registry),
        },
        f"adaptiveisp_all_modules_K{steps}": {
            "posisp fused (numba)": lambda: _ours_adaptiveisp(ISPExecutor(registry, np, "fast"), img, phys, chosen),
            "torch peer": lambda: torch_peer.run_adaptiveisp(nchw, [names[c] for c in chosen], phys, registry),
        },
    }
    rows = []
    for workload, impls in work.items():
        for impl, fn in impls.items():
            t = _timeit(fn, np, min_time, max_reps=5)
            rows.append(
                {
                    "size": size,
                    "batch": batch,
                    "workload": workload,
                    "impl": impl,
                    "seconds": t,
                    "images_per_s": batch / t,
                }
            )
        peer = next(r["seconds"] for r in rows if r["workload"] == workload and r["impl"] == "torch peer")
        for r in rows:
            if r["workload"] == workload:
                r["speedup_vs_torch_peer"] = peer / r["seconds"]
    return rows


def run(sizes: tuple[int, ...] = (256, 512), batch: int = 32, steps: int = 5, min_time: float = 0.5) -> dict[str, Any]:
    rows = [r for size in sizes for r in bench_peer(size, batch, steps, min_time)]
    return {**machine_info(), "torch": torch.__version__, "torch_threads": torch.get_num_threads(), "rows": rows}


def format_rows(result: dict[str, Any]) -> str:
    lines = ["| size | batch | workload | implementation | images/s | × torch peer |", "|---|---|---|---|---|---|"]
    for r in result["rows"]:
        lines.append(
            f"| {r['size']} | {r['batch']} | {r['workload']} | {r['impl']} | {r['images_per_s']:.2f} "
            f"| {r['speedup_vs_torch_peer']:.2f} |"
        )
    return "\n".join(lines)
