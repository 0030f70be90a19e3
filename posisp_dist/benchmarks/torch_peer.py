"""The peer we measure against, for comparison only: the modules as torch ops, the way the POS-ISP and
AdaptiveISP code runs them (NCHW batches, one torch call chain per module, NLM as shifted differences +
`avg_pool2d`), and AdaptiveISP's step-wise execution, where every module runs at every step and one
output is kept. Same definitions as `posisp_dist/isp/modules.py` (checked by the tests), so the bench
compares execution styles on identical work."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from posisp_dist.isp import modules as m
from posisp_dist.isp.registry import DEFAULT_REGISTRY, Registry

LUMA = torch.tensor(m.LUMA).view(1, 3, 1, 1)
SHARPEN = torch.tensor(m.SHARPEN_KERNEL, dtype=torch.float32).div(13.0).expand(3, 1, 3, 3).contiguous()


def _col(p: torch.Tensor, i: int = 0) -> torch.Tensor:
    return p[:, i].view(-1, 1, 1, 1)


def _lum(x: torch.Tensor) -> torch.Tensor:
    return (x * LUMA).sum(dim=1, keepdim=True)


def exposure(x: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    return (x * torch.exp2(_col(p))).clamp(0, 1)


def gamma(x: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    return x.clamp_min(m.EPS).pow(_col(p)).clamp(0, 1)


def ccm(x: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    mat = torch.from_numpy(m.ccm_matrix(p.numpy(), np))
    return torch.einsum("bij,bjhw->bihw", mat, x).clamp(0, 1)


def sharpen(x: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    blur = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), SHARPEN, groups=3)
    f = _col(p)
    return (f * x + (1 - f) * blur).clamp(0, 1)


def denoise(x: torch.Tensor, p: torch.Tensor, search: int = 5, patch: int = 2) -> torch.Tensor:
    _, _, h, w = x.shape
    grey = _lum(x)
    gp = F.pad(grey, (search,) * 4, mode="reflect")
    xp = F.pad(x, (search,) * 4, mode="reflect")
    inv_h = 1.0 / _col(p)
    acc, wsum = torch.zeros_like(x), torch.zeros_like(grey)
    for dy in range(2 * search + 1):
        for dx in range(2 * search + 1):
            d2 = (grey - gp[:, :, dy : dy + h, dx : dx + w]).square()
            dist = F.avg_pool2d(F.pad(d2, (patch,) * 4, mode="replicate"), 2 * patch + 1, stride=1)
            wgt = torch.exp(-dist * inv_h)
            acc += wgt * xp[:, :, dy : dy + h, dx : dx + w]
            wsum += wgt
    return (acc / wsum).clamp(0, 1)


def tone(x: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    n = p.shape[1]
    slopes = p / p.sum(dim=1, keepdim=True)
    knots = torch.cat([torch.zeros_like(slopes[:, :1]), slopes.cumsum(dim=1)], dim=1)
    t = x.clamp(0, 1).flatten(1) * n
    seg = t.floor().clamp_max(n - 1).long()
    out = knots.gather(1, seg) + (t - seg) * slopes.gather(1, seg)
    return out.view_as(x).clamp(0, 1)


def contrast(x: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    lum = _lum(x).clamp(0, 1)
    enhanced = x / (lum + m.EPS) * (0.5 - 0.5 * torch.cos(math.pi * lum))
    return (x + _col(p) * (enhanced - x)).clamp(0, 1)


def saturation(x: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    v = x.amax(dim=1, keepdim=True)
    s = (v - x.amin(dim=1, keepdim=True)) / v.clamp_min(m.EPS)
    s_new = s + (1 - s) * (0.5 - (0.5 - v).abs()) * 0.8
    enhanced = v - (v - x) * (s_new / s.clamp_min(m.EPS))
    return (x + _col(p) * (enhanced - x)).clamp(0, 1)


def desaturation(x: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    return (x + _col(p) * (_lum(x) - x)).clamp(0, 1)


def white_balance(x: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    return (x * m.wb_gains(p).view(-1, 3, 1, 1)).clamp(0, 1)


TORCH_MODULES = {
    "exposure": exposure,
    "gamma": gamma,
    "ccm": ccm,
    "sharpen": sharpen,
    "denoise": denoise,
    "tone": tone,
    "contrast": contrast,
    "saturation": saturation,
    "desaturation": desaturation,
    "white_balance": white_balance,
}


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
