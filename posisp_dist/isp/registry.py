"""One registry table: the single source of truth for modules, parameter ranges, units and costs.

The action space, the normalised -> physical mapping, the README table and the parametrised tests are
all derived from the registry a config selects: `DEFAULT_MODULES` (the paper's ten) by default, or any
modules of the catalogue (`catalogue.py`: the ten plus one `ModuleSpec` per file of `isp/extra/`).
Normalised parameters live in [0, 1] and map linearly to ``low + (high - low) * p`` (POS-ISP's mapping).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import numpy as np

from posisp_dist.isp import modules as m

ModuleFn = Callable[[Any, Any, ModuleType], Any]
TwinFn = Callable[[Any, Any], Any]  # (x NCHW torch tensor, physical params (B, k)) -> tensor; see torch_twin.py


@dataclass(frozen=True)
class ModuleSpec:
    """Declaration of one ISP module: its function and its parameters' physical ranges and units."""

    name: str
    fn: ModuleFn
    param_names: tuple[str, ...]
    low: tuple[float, ...]
    high: tuple[float, ...]
    units: tuple[str, ...]
    identity: tuple[float, ...]
    cost: float  # AdaptiveISP's filters_runtime figure (relative runtime; presumably ms at 512^2)
    doc: str = ""
    # An extension module's own differentiable torch twin (the paper's ten have theirs in torch_twin.py).
    twin: TwinFn | None = field(default=None, compare=False)
    # Optional fused kernels by array namespace name ("numpy", "cupy"); without one the reference runs.
    kernels: Mapping[str, ModuleFn] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        k = len(self.param_names)
        if not (len(self.low) == len(self.high) == len(self.units) == len(self.identity) == k):
            raise ValueError(f"module {self.name!r}: param_names, low, high, units, identity differ in length")
        for name, lo, hi, idv in zip(self.param_names, self.low, self.high, self.identity, strict=True):
            if not lo < hi or not lo <= idv <= hi:
                raise ValueError(f"module {self.name!r} param {name!r}: need low < high and identity in range")

    @property
    def n_params(self) -> int:
        return len(self.param_names)

    def __call__(self, img: Any, params: Any, xp: ModuleType = np) -> Any:
        """Run the module after checking shapes, dtype and that params are finite and in range."""
        check_image(img, xp)
        params = xp.asarray(params, dtype=xp.float32)
        if params.ndim != 2 or params.shape != (img.shape[0], self.n_params):
            raise ValueError(
                f"module {self.name!r}: params must be shaped (B={img.shape[0]}, {self.n_params}), "
                f"got {tuple(params.shape)}"
            )
        check_physical_range(self, params, xp)
        return self.fn(img, params, xp)


def check_image(img: Any, xp: ModuleType = np) -> None:
    """Raise ValueError unless img is a finite float32 (B, H, W, 3) batch."""
    if getattr(img, "ndim", None) != 4 or img.shape[-1] != 3:
        raise ValueError(f"image batch must be shaped (B, H, W, 3), got {getattr(img, 'shape', type(img))}")
    if img.dtype != xp.float32:
        raise ValueError(f"image batch must be float32 linear RGB in [0, 1], got dtype {img.dtype}")
    if not bool(xp.isfinite(img).all()):
        raise ValueError("image batch contains NaN or infinite values")


def check_physical_range(spec: ModuleSpec, params: Any, xp: ModuleType = np) -> None:
    """Raise ValueError naming the module and parameter if params are NaN or outside [low, high]."""
    lo = xp.asarray(spec.low, dtype=xp.float32)
    hi = xp.asarray(spec.high, dtype=xp.float32)
    bad_nan = ~xp.isfinite(params)
    bad_rng = (params < lo - 1e-6) | (params > hi + 1e-6)
    for kind, bad in (("NaN/inf", bad_nan), ("out-of-range", bad_rng & ~bad_nan)):
        if bool(bad.any()):
            col = int(xp.argmax(bad.any(axis=0)))
            row = int(xp.argmax(bad[:, col]))
            raise ValueError(
                f"module {spec.name!r}: {kind} value {float(params[row, col])} for parameter "
                f"{spec.param_names[col]!r} of image {row}; allowed range [{spec.low[col]}, {spec.high[col]}] "
                f"{spec.units[col]}"
            )


def module_spec(
    name: str,
    fn: ModuleFn,
    params: Sequence[tuple[str, float, float, str, float]],
    cost: float,
    twin: TwinFn | None = None,
    kernels: Mapping[str, ModuleFn] | None = None,
) -> ModuleSpec:
    """A spec from one row per parameter, (name, low, high, unit, identity); its doc is `fn`'s docstring."""
    names, low, high, units, ident = zip(*params, strict=True)
    doc = (fn.__doc__ or "").strip()
    return ModuleSpec(name, fn, names, low, high, units, ident, cost, doc, twin, dict(kernels or {}))


_CCM_PARAMS = [(f"m{r}{c}", -2.0, 2.0, "matrix entry", 1.0 if r == c else 0.0) for r in range(3) for c in range(3)]
_TONE_PARAMS = [(f"slope{i}", 0.5, 2.0, "relative slope", 1.0) for i in range(8)]
_WB_PARAMS = [(f"gain_{c}", 1 / 1.1, 1.1, "gain multiplier", 1.0) for c in "rgb"]

# Order = AdaptiveISP's cfg.filters ids 0..9; ranges = POS-ISP's linear mapping (reference/paper.md §3.1).
DEFAULT_MODULES: tuple[ModuleSpec, ...] = (
    module_spec("exposure", m.exposure, [("ev", -3.5, 3.5, "EV stops", 0.0)], 1.7),
    module_spec("gamma", m.gamma, [("gamma", 1 / 3, 3.0, "exponent", 1.0)], 2.0),
    module_spec("ccm", m.ccm, _CCM_PARAMS, 1.9),
    module_spec("sharpen", m.sharpen, [("factor", 1e-5, 10.0, "blend factor (<1 blurs)", 1.0)], 6.3),
    module_spec("denoise", m.denoise, [("h", 1e-5, 1.0, "NLM filtering strength", 1e-5)], 10.0),
    module_spec("tone", m.tone_curve, _TONE_PARAMS, 2.7),
    module_spec("contrast", m.contrast, [("alpha", -1.0, 1.0, "blend weight", 0.0)], 2.1),
    module_spec("saturation", m.saturation_plus, [("alpha", 0.0, 1.0, "blend weight", 0.0)], 2.0),
    module_spec("desaturation", m.desaturation, [("alpha", 0.0, 1.0, "blend weight", 0.0)], 1.9),
    module_spec("white_balance", m.white_balance, _WB_PARAMS, 1.7),
)


@dataclass(frozen=True)
class Registry:
    """An ordered table of modules with the flat parameter layout derived from it."""

    modules: tuple[ModuleSpec, ...] = DEFAULT_MODULES
    offsets: tuple[int, ...] = field(init=False)

    def __post_init__(self) -> None:
        names = [s.name for s in self.modules]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate module names in registry: {names}")
        object.__setattr__(self, "offsets", tuple(np.cumsum([0] + [s.n_params for s in self.modules]).tolist()))

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.modules)

    @property
    def n_modules(self) -> int:
        return len(self.modules)

    @property
    def n_params(self) -> int:
        return self.offsets[-1]

    def index(self, name: str) -> int:
        try:
            return self.names.index(name)
        except ValueError:
            raise KeyError(f"unknown ISP module {name!r}; known modules: {', '.join(self.names)}") from None

    def param_slice(self, i: int) -> slice:
        return slice(self.offsets[i], self.offsets[i + 1])

    def vector(self, attr: str) -> np.ndarray:
        """Concatenate a per-parameter attribute ('low', 'high', 'identity') into a (n_params,) vector."""
        return np.concatenate([np.asarray(getattr(s, attr), np.float32) for s in self.modules])

    @property
    def costs(self) -> np.ndarray:
        return np.asarray([s.cost for s in self.modules], np.float32)

    def to_physical(self, normalised: Any, xp: ModuleType = np) -> Any:
        """Map (B, n_params) normalised params in [0, 1] to physical units; raise on NaN or out-of-range."""
        p = xp.asarray(normalised, dtype=xp.float32)
        if p.ndim != 2 or p.shape[1] != self.n_params:
            raise ValueError(f"normalised params must be shaped (B, {self.n_params}), got {tuple(p.shape)}")
        if not bool(xp.isfinite(p).all()):
            raise ValueError("normalised params contain NaN or inf")
        if bool(((p < -1e-6) | (p > 1 + 1e-6)).any()):
            raise ValueError(f"normalised params must lie in [0, 1]; got min {float(p.min())}, max {float(p.max())}")
        lo, hi = xp.asarray(self.vector("low")), xp.asarray(self.vector("high"))
        return lo + (hi - lo) * xp.clip(p, 0.0, 1.0)

    def to_normalised(self, physical: Any, xp: ModuleType = np) -> Any:
        lo, hi = xp.asarray(self.vector("low")), xp.asarray(self.vector("high"))
        return (xp.asarray(physical, dtype=xp.float32) - lo) / (hi - lo)

    def identity_normalised(self) -> np.ndarray:
        return self.to_normalised(self.vector("identity")).astype(np.float32)

    def subset(self, names: Sequence[str]) -> Registry:
        """A registry holding only `names`, in that order (raises on unknown names)."""
        return Registry(tuple(self.modules[self.index(n)] for n in names))

    def with_module(self, spec: ModuleSpec) -> Registry:
        """A registry extended by one more module."""
        return Registry((*self.modules, spec))

    def markdown_table(self, opt_in: Collection[str] = ()) -> str:
        """The modules as a Markdown table: action id (or "opt-in" for the names in `opt_in`), parameters with
        their physical ranges and units, identity, cost and what the module does (its doc's first line)."""
        rows = [
            "| id | module | parameters (physical range, unit) | identity | cost | what it does |",
            "|---|---|---|---|---|---|",
        ]
        for i, s in enumerate(self.modules):
            ps = "; ".join(
                f"{n} [{lo:.3g}, {hi:.3g}] {u}"
                for n, lo, hi, u in zip(s.param_names, s.low, s.high, s.units, strict=True)
            )
            ident = ", ".join(f"{v:.3g}" for v in s.identity)
            doc = s.doc.splitlines()[0].replace("|", "\\|") if s.doc else ""  # a "|" would end the cell
            rows.append(f"| {'opt-in' if s.name in opt_in else i} | {s.name} | {ps} | {ident} | {s.cost} | {doc} |")
        return "\n".join(rows)


DEFAULT_REGISTRY = Registry()
