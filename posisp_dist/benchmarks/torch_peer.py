"""The peer we measure against, for comparison only: the modules as torch ops, the way the POS-ISP and
AdaptiveISP code runs them (NCHW batches, one torch call chain per module, NLM as shifted differences +
`avg_pool2d`), and AdaptiveISP's step-wise execution, where every module runs at every step and one
output is kept. The modules are the differentiable twins of `posisp_dist/isp/torch_twin.py` (checked
against the references by the tests), so the bench compares execution styles on identical work."""

from __future__ import annotations

import numpy as np
import torch

from posisp_dist.isp.registry import DEFAULT_REGISTRY, Registry
from posisp_dist.isp.torch_twin import twin_of

TORCH_MODULES = {s.name: twin_of(s) for s in DEFAULT_REGISTRY.modules}  # the differentiable twins, by name


def to_nchw(img: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(img.transpose(0, 3, 1, 2)))


def run_module(name: str, img_nchw: torch.Tensor, params_physical: np.ndarray) -> torch.Tensor:
    with torch.inference_mode():
        return TORCH_MODULES[name](img_nchw, torch.from_numpy(np.asarray(params_physical, np.float32)))


def run_sequence(
    img_nchw: torch.Tensor, names: list[str], params_physical: np.ndarray, registry: Registry = DEFAULT_REGISTRY
) -> torch.Tensor:
    """One pipeline for the whole batch, module after module (POS-ISP: executed once)."""
    x = img_nchw
    for name in names:
        x = run_module(name, x, params_physical[:, registry.param_slice(registry.index(name))])
    return x


def run_adaptiveisp(
    img_nchw: torch.Tensor, chosen: list[str], params_physical: np.ndarray, registry: Registry = DEFAULT_REGISTRY
) -> torch.Tensor:
    """AdaptiveISP's step-wise execution: at each step every module runs on the current image, the chosen
    one's output is kept."""
    x = img_nchw
    for keep in chosen:
        outs = {n: run_module(n, x, params_physical[:, registry.param_slice(i)]) for i, n in enumerate(registry.names)}
        x = outs[keep]
    return x
