"""Run a batch of *different* pipelines with at most L x M module calls.

A batch of pipelines is a token matrix ``(B, L)`` of module ids, where the id ``n_modules`` is STOP and
ends that image's pipeline, plus one row of normalised parameters ``(B, n_params)`` per image. At each
position the executor groups the still-running images by module and calls each module once on its group.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from types import ModuleType
from typing import Any

import numpy as np

from posisp_dist.isp.kernels import implementation
from posisp_dist.isp.registry import DEFAULT_REGISTRY, Registry, check_image
from posisp_dist.isp.xp import to_numpy


@dataclass
class ExecStats:
    """Counters of work done: kernel calls and per-image module applications."""

    module_calls: int = 0
    module_runs: int = 0  # images x modules actually processed
    batches: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


@dataclass(frozen=True)
class Pipeline:
    """One decoded pipeline: module names in order with their physical parameters."""

    modules: tuple[str, ...]
    params: tuple[dict[str, float], ...]

    def to_json(self) -> dict[str, Any]:
        return {"modules": list(self.modules), "params": [dict(p) for p in self.params]}

    def cost(self, registry: Registry = DEFAULT_REGISTRY) -> float:
        return float(sum(registry.modules[registry.index(n)].cost for n in self.modules))


def sequence_lengths(tokens: np.ndarray, stop: int) -> np.ndarray:
    """Number of modules before the first STOP in each row of a (B, L) token matrix."""
    is_stop = np.asarray(tokens) == stop
    first = np.where(is_stop.any(axis=1), is_stop.argmax(axis=1), is_stop.shape[1])
    return first.astype(np.int64)


class ISPExecutor:
    """Executes batches of pipelines over an array namespace (NumPy or CuPy)."""

    def __init__(self, registry: Registry = DEFAULT_REGISTRY, xp: ModuleType = np, kernels: str = "fast") -> None:
        self.registry = registry
        self.xp = xp
        self.kernels = kernels
        self.impls = tuple(implementation(spec, xp, kernels) for spec in registry.modules)
        self.stop = registry.n_modules
        self.stats = ExecStats()

    def check_tokens(self, tokens: Any, batch: int) -> np.ndarray:
        t = np.asarray(to_numpy(tokens))
        if t.ndim != 2 or t.shape[0] != batch:
            raise ValueError(f"tokens must be shaped (B={batch}, L), got {t.shape}")
        if not np.issubdtype(t.dtype, np.integer):
            if not np.all(np.isfinite(t)) or not np.all(t == np.round(t)):
                raise ValueError("tokens must be integer module ids (got NaN or fractional values)")
            t = t.astype(np.int64)
        if t.size and (t.min() < 0 or t.max() > self.stop):
            raise ValueError(f"module ids must lie in [0, {self.stop}] ({self.stop} = STOP); got {t.min()}..{t.max()}")
        return t

    def run(self, img: Any, tokens: Any, params_normalised: Any) -> Any:
        """Apply each row's pipeline to its image; returns a new (B, H, W, 3) float32 batch."""
        xp = self.xp
        check_image(img, xp)
        b = img.shape[0]
        t = self.check_tokens(tokens, b)
        phys = self.registry.to_physical(params_normalised, xp)
        if phys.shape[0] != b:
            raise ValueError(f"params batch {phys.shape[0]} does not match image batch {b}")
        active = np.ones(b, dtype=bool)
        out = img.copy()
        self.stats.batches += 1
        for pos in range(t.shape[1]):
            col = t[:, pos]
            active &= col != self.stop
            if not active.any():
                break
            for mod in np.unique(col[active]):
                idx = np.nonzero(active & (col == mod))[0]
                sel = xp.asarray(idx)
                out[sel] = self.impls[int(mod)](out[sel], phys[sel][:, self.registry.param_slice(int(mod))], xp)
                self.stats.module_calls += 1
                self.stats.module_runs += len(idx)
        return out

    def decode(self, tokens_row: Any, params_row: Any) -> Pipeline:
        """Decode one (L,) token row and (n_params,) normalised row into a `Pipeline`."""
        t = self.check_tokens(np.asarray(to_numpy(tokens_row))[None], 1)[0]
        phys = to_numpy(self.registry.to_physical(np.asarray(to_numpy(params_row))[None]))[0]
        names, params = [], []
        for tok in t[: sequence_lengths(t[None], self.stop)[0]]:
            spec = self.registry.modules[int(tok)]
            vals = phys[self.registry.param_slice(int(tok))]
            names.append(spec.name)
            params.append({n: round(float(v), 6) for n, v in zip(spec.param_names, vals, strict=True)})
        return Pipeline(tuple(names), tuple(params))

    def encode(self, pipeline: Pipeline, max_len: int) -> tuple[np.ndarray, np.ndarray]:
        """Inverse of `decode`: (tokens (max_len,), normalised params (n_params,)); unused params at identity."""
        if len(pipeline.modules) > max_len:
            raise ValueError(f"pipeline has {len(pipeline.modules)} modules, more than max_len={max_len}")
        tokens = np.full(max_len, self.stop, np.int64)
        phys = self.registry.vector("identity").copy()
        for pos, (name, p) in enumerate(zip(pipeline.modules, pipeline.params, strict=True)):
            i = self.registry.index(name)
            tokens[pos] = i
            spec = self.registry.modules[i]
            unknown = set(p) - set(spec.param_names)
            if unknown:
                raise KeyError(f"module {name!r} has no parameters {sorted(unknown)}; it has {spec.param_names}")
            for j, pn in enumerate(spec.param_names):
                phys[self.registry.offsets[i] + j] = p.get(pn, spec.identity[j])
        return tokens, np.asarray(self.registry.to_normalised(phys), np.float32)
