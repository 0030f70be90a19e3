"""The differentiable torch twin of the module library: the only place `isp/` touches torch.

Each twin computes what its reference in `modules.py` computes (same clamps, same constants), on NCHW
torch tensors with per-image physical params `(B, k)`, and is differentiable in both the image and the
params, so the task loss of the frozen task model can be backpropagated through a whole pipeline into
the normalised parameters (POS-ISP's pathwise parameter learning). A module declared with its own twin
(`ModuleSpec.twin`: the extension modules of `isp/extra/`, each in its own file) uses it; the paper's ten
are looked up here by the identity of their reference function, as `kernels.py` does, so a module
registered with its own function has no twin until one is declared or registered for it (`register_twin`),
and asking for one names the module.

Where a reference clamps, the twin clamps too: the gradient is then zero on the clamped side, which is
the true derivative of the reference. Constants that avoid a division by zero (EPS) keep the gradients
finite at the range ends (tested with finite differences in float64).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from posisp_dist.isp import fast_cpu
from posisp_dist.isp import modules as m
from posisp_dist.isp.registry import ModuleSpec, Registry

Twin = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _col(p: torch.Tensor, i: int = 0) -> torch.Tensor:
    """Column i of (B, k) params as (B, 1, 1, 1), to broadcast over NCHW."""
    return p[:, i].view(-1, 1, 1, 1)


def _lum(x: torch.Tensor) -> torch.Tensor:
    w = torch.tensor(m.LUMA, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x * w).sum(dim=1, keepdim=True)


def exposure(x: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """Scale linear intensity by 2**EV."""
    return (x * torch.exp2(_col(p))).clamp(0, 1)


def gamma(x: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """Raise intensity to the power gamma."""
    return x.clamp_min(m.EPS).pow(_col(p)).clamp(0, 1)  # EPS: finite log(x) in d/dgamma at black pixels


def ccm_matrix(p: torch.Tensor) -> torch.Tensor:
    """(B, 9) entries -> (B, 3, 3) with rows normalised to sum to 1 (the reference's near-zero guard)."""
    mat = p.reshape(-1, 3, 3)
    s = mat.sum(dim=2, keepdim=True)
    guard = torch.where(s < 0, torch.full_like(s, -1e-3), torch.full_like(s, 1e-3))
    return mat / torch.where(s.abs() < 1e-3, guard, s)


def ccm(x: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """3x3 colour matrix with rows summing to 1."""
    return torch.einsum("bij,bjhw->bihw", ccm_matrix(p), x).clamp(0, 1)


def blur3x3(x: torch.Tensor) -> torch.Tensor:
    """torchvision's sharpness smoothing filter, edges replicated. (Box sums of shifted views give the same
    values about 3x faster on a CPU, but with another float32 rounding, which sends a training run elsewhere:
    changing it means re-running the seeds.)"""
    k = torch.tensor(m.SHARPEN_KERNEL, dtype=x.dtype, device=x.device).div(13.0).expand(3, 1, 3, 3)
    return F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), k, groups=3)


def sharpen(x: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """f*x + (1-f)*blur(x)."""
    f = _col(p)
    return (f * x + (1 - f) * blur3x3(x)).clamp(0, 1)


def denoise(x: torch.Tensor, p: torch.Tensor, search: int = 5, patch: int = 2) -> torch.Tensor:
    """Grey-guided non-local means, 11x11 search, 5x5 patches, weights exp(-patch_dist / h)."""
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
            acc = acc + wgt * xp[:, :, dy : dy + h, dx : dx + w]
            wsum = wsum + wgt
    return (acc / wsum).clamp(0, 1)  # wsum >= 1: the centre offset always has weight 1


DENOISE_FD_STEP = 1e-2  # physical h step of the central difference in `denoise_straight_through`


class _DenoiseStraightThrough(torch.autograd.Function):
    """NLM forward with the fused CPU kernel; backward: the image gradient passes straight through (the
    filter's rows sum to 1, so the gradient of a global upstream parameter keeps its pixel sum) and d/dh is a
    central difference of the same kernel, h +- 0.01 (inside the registry range), from the same kernel pass as
    the value (`fast_cpu.denoise_strengths`). The difference, not the exact d/dh, on purpose: the exact
    derivative (which the kernel can give in one pass too) trained worse over seeds 0-2 (24.1 +- 2.8 test mAP
    against 27.6 +- 3.1, bench/results/quick-seeds-exact-dh.json): at small h it is steep, the difference over
    0.02 is smooth. About 40x cheaper than `denoise`'s exact graph."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        img = x.detach().permute(0, 2, 3, 1).contiguous().numpy().astype(np.float32, copy=False)
        h = p.detach().numpy().astype(np.float32)
        lo, hi = np.maximum(h - DENOISE_FD_STEP, 1e-5), h + DENOISE_FD_STEP  # stay inside the registry range
        out, up, down = fast_cpu.denoise_strengths(img, np.concatenate([h, hi, lo], axis=1))
        ctx.fd = torch.from_numpy((up - down) / (hi - lo)[:, :, None, None])  # (B, 3, H, W) d out/dh
        return torch.from_numpy(out).to(x.dtype)

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return grad_out, (grad_out * ctx.fd.to(grad_out.dtype)).flatten(1).sum(1, keepdim=True)


def denoise_straight_through(x: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """`denoise`'s value (the fused kernel), with the cheap backward of `_DenoiseStraightThrough` (CPU
    tensors; on a GPU the exact graph runs): the `straight_through` choice of `run_pipelines`."""
    if x.device.type != "cpu":
        return denoise(x, p)
    return _DenoiseStraightThrough.apply(x, p)


def tone_curve(x: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """8-segment piecewise-linear curve, slopes normalised so that 1 maps to 1."""
    n = p.shape[1]
    slopes = p / p.sum(dim=1, keepdim=True)
    knots = torch.cat([torch.zeros_like(slopes[:, :1]), slopes.cumsum(dim=1)], dim=1)
    t = x.clamp(0, 1).flatten(1) * n
    seg = t.detach().floor().clamp_max(n - 1).long()  # x == 1 belongs to the last segment
    out = knots.gather(1, seg) + (t - seg) * slopes.gather(1, seg)
    return out.view_as(x).clamp(0, 1)


def contrast(x: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """Lerp towards a cosine S-curve of luminance."""
    lum = _lum(x).clamp(0, 1)
    enhanced = x / (lum + m.EPS) * (0.5 - 0.5 * torch.cos(math.pi * lum))  # EPS: black stays black
    return (x + _col(p) * (enhanced - x)).clamp(0, 1)


def saturation_plus(x: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """Raise HSV saturation most in mid-tones, blended by alpha."""
    v = x.amax(dim=1, keepdim=True)
    s = (v - x.amin(dim=1, keepdim=True)) / v.clamp_min(m.EPS)  # EPS: black has s = 0
    s_new = s + (1 - s) * (0.5 - (0.5 - v).abs()) * 0.8
    enhanced = v - (v - x) * (s_new / s.clamp_min(m.EPS))
    return (x + _col(p) * (enhanced - x)).clamp(0, 1)


def desaturation(x: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """Lerp each pixel towards its luminance."""
    return (x + _col(p) * (_lum(x) - x)).clamp(0, 1)


def white_balance(x: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """Per-channel gains normalised to keep luminance."""
    return (x * m.wb_gains(p).view(-1, 3, 1, 1)).clamp(0, 1)


_TWINS: dict[Callable[..., Any], Twin] = {
    m.exposure: exposure,
    m.gamma: gamma,
    m.ccm: ccm,
    m.sharpen: sharpen,
    m.denoise: denoise,
    m.tone_curve: tone_curve,
    m.contrast: contrast,
    m.saturation_plus: saturation_plus,
    m.desaturation: desaturation,
    m.white_balance: white_balance,
}


def register_twin(reference: Callable[..., Any], twin: Twin) -> None:
    """Declare the differentiable twin of a module's reference function (for modules registered later)."""
    _TWINS[reference] = twin


def twin_of(spec: ModuleSpec) -> Twin:
    """The twin of `spec`; raises naming the module when it has none (pathwise learning needs one)."""
    if spec.twin is not None:
        return spec.twin
    try:
        return _TWINS[spec.fn]
    except KeyError:
        raise KeyError(
            f"ISP module {spec.name!r} has no differentiable torch twin, so its parameters cannot be learned "
            "pathwise; declare one (module_spec(..., twin=...)) or use param_learning: ppo"
        ) from None


def to_physical(registry: Registry, p: torch.Tensor) -> torch.Tensor:
    """Normalised (B, P) in [0, 1] -> physical units, differentiably (the registry's linear mapping)."""
    lo = torch.as_tensor(registry.vector("low"), dtype=p.dtype, device=p.device)
    hi = torch.as_tensor(registry.vector("high"), dtype=p.dtype, device=p.device)
    return lo + (hi - lo) * p.clamp(0, 1)


APPROXIMATE: dict[Callable[..., Any], Twin] = {m.denoise: denoise_straight_through}  # `backward="fast"`


def run_pipelines(
    x: torch.Tensor,
    tokens: Any,
    params: torch.Tensor,
    registry: Registry,
    backward: str = "exact",
    stats: Any = None,
) -> torch.Tensor:
    """A batch of different pipelines, differentiably: x (B, 3, H, W) in [0, 1], tokens (B, L) module ids
    (id M = STOP ends a row), params (B, P) normalised. As the executor does, each position groups the
    rows by module and calls each module once on its group. `backward="fast"` swaps the twins listed in
    `APPROXIMATE` (the NLM denoise) for their same-value, cheap-gradient form. `stats` (an executor's
    `ExecStats`) counts the work as the executor counts its own."""
    if backward not in ("exact", "fast"):
        raise ValueError(f"backward must be exact or fast, got {backward!r}")
    tok = np.asarray(tokens.cpu() if isinstance(tokens, torch.Tensor) else tokens, np.int64)
    if tok.ndim != 2 or tok.shape[0] != x.shape[0]:
        raise ValueError(f"tokens must be shaped (B={x.shape[0]}, L), got {tok.shape}")
    stop = registry.n_modules
    alive = np.cumsum(tok == stop, axis=1) == 0  # positions before each row's first STOP
    phys = to_physical(registry, params)
    if stats is not None:
        stats.batches += 1
    twins = [twin_of(s) for s in registry.modules]
    if backward == "fast":
        twins = [APPROXIMATE.get(s.fn, t) for s, t in zip(registry.modules, twins, strict=True)]
    for t in range(tok.shape[1]):
        col = np.where(alive[:, t], tok[:, t], stop)
        if (col == stop).all():
            break
        out = x.clone()
        for mod in np.unique(col[col != stop]):
            rows = torch.from_numpy(np.nonzero(col == mod)[0]).to(x.device)
            out[rows] = twins[mod](x[rows], phys[rows][:, registry.param_slice(int(mod))])
            if stats is not None:
                stats.module_calls += 1
                stats.module_runs += len(rows)
        x = out
    return x


def brightness_penalty(x: torch.Tensor) -> torch.Tensor:
    """(B,) the paper's range penalty on mean brightness (as `envs.core.brightness_penalty`), differentiable."""
    mean = x.flatten(1).mean(dim=1)
    return (0.01 - mean).clamp_min(0) * 1000.0 + (mean - 0.9).clamp_min(0) * 10.0
