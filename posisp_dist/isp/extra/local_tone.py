"""Local tone mapping: the local mean brightness is pulled towards mid-grey, the detail around it kept.

The operator works on log2 luminance (EV). A box of half-width `radius` pixels gives each pixel the local
mean EV of its surroundings (the "base" layer); each pixel is scaled by the gain, in EV,

    gain = strength * (log2(0.18) - base)

so a region whose mean sits 4 EV under mid-grey is lifted by 4 * strength EV and one 2 EV over it is lowered
by 2 * strength EV, while the ratios inside a region (the detail, within a box) and between the channels of a
pixel (the hue) stay as they were, until the output clips at 1. `strength` = 0 is the identity at any
radius; 1 would flatten the base layer to mid-grey. A fractional radius blends the two neighbouring integer
boxes linearly, so the output is continuous (and differentiable) in the radius too.

Integral images are summed in float64: the sums of EVs over a padded frame are large, and float32 would lose
the small differences between neighbouring windows.
"""

from __future__ import annotations

import math
from types import ModuleType
from typing import Any

import torch
import torch.nn.functional as F

from posisp_dist.isp.modules import LUMA, luminance
from posisp_dist.isp.registry import module_spec

ANCHOR_EV = math.log2(0.18)  # mid-grey: the level the local mean is pulled towards, left where it is
LUM_FLOOR = 2.0**-10  # darkest luminance the local mean sees: log2(0) = -inf, and black would ask for infinite lift
RADIUS_MAX = 16  # the largest box half-width in pixels: the frame every integral image is padded by


def _window_bounds(r: Any, n: int, xp: Any) -> tuple[Any, Any]:
    """(B, n) first and one-past-last integral-image indices of the boxes of half-width r (B,) along an axis."""
    lo = (RADIUS_MAX - r)[:, None] + xp.arange(n)[None, :]
    return lo, lo + 2 * r[:, None] + 1


def _box_means(s: Any, r: Any, h: int, w: int, xp: Any) -> Any:
    """(B, h, w) means over boxes of per-image integer half-width r (B,), from the exclusive integral image s."""
    ylo, yhi = _window_bounds(r, h, xp)
    xlo, xhi = _window_bounds(r, w, xp)
    b = xp.arange(s.shape[0])[:, None, None]

    def at(y: Any, x: Any) -> Any:
        return s[b, y[:, :, None], x[:, None, :]]

    k = 2 * r + 1
    return (at(yhi, xhi) - at(ylo, xhi) - at(yhi, xlo) + at(ylo, xlo)) / (k * k)[:, None, None]


def local_mean(ev: Any, radius: Any, xp: ModuleType) -> Any:
    """(B, H, W) float64 mean of `ev` over boxes of fractional half-width `radius` (B,) px, edges replicated."""
    _, h, w = ev.shape
    pad = RADIUS_MAX
    p = xp.pad(ev, ((0, 0), (pad, pad), (pad, pad)), mode="edge")
    s = xp.pad(p.cumsum(axis=1).cumsum(axis=2), ((0, 0), (1, 0), (1, 0)))  # leading zeros: exclusive sums
    r0 = xp.minimum(xp.floor(radius), RADIUS_MAX - 1)  # radius = RADIUS_MAX is r0 = 15 with weight 1 on r0 + 1
    frac = (radius - r0)[:, None, None]
    r0 = r0.astype(xp.int64)
    return (1.0 - frac) * _box_means(s, r0, h, w, xp) + frac * _box_means(s, r0 + 1, h, w, xp)


def local_tone(img: Any, params: Any, xp: ModuleType) -> Any:
    """Pull the local mean brightness (box of `radius` px) towards mid-grey by `strength` EV per EV."""
    ev = xp.log2(xp.maximum(luminance(img, xp), LUM_FLOOR)).astype(xp.float64)
    base = local_mean(ev, params[:, 1].astype(xp.float64), xp)
    gain = xp.exp2(params[:, 0].astype(xp.float64)[:, None, None] * (ANCHOR_EV - base))
    # gains above 1 can push bright detail in a dark region past white: clip, as every module does
    return xp.clip(img * gain.astype(xp.float32)[..., None], 0.0, 1.0).astype(xp.float32, copy=False)


def local_tone_twin(x: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """`local_tone` on NCHW tensors, differentiable in the image, the strength and the radius."""
    _, _, h, w = x.shape
    lum = x[:, 0] * LUMA[0] + x[:, 1] * LUMA[1] + x[:, 2] * LUMA[2]  # the reference's order of operations
    ev = torch.log2(lum.clamp_min(LUM_FLOOR)).double()
    padded = F.pad(ev[:, None], (RADIUS_MAX,) * 4, mode="replicate")[:, 0]
    s = F.pad(padded.cumsum(1).cumsum(2), (1, 0, 1, 0))
    radius = p[:, 1].double()
    r0 = radius.detach().floor().clamp_max(RADIUS_MAX - 1)
    frac = (radius - r0)[:, None, None]
    r0, on = r0.long(), _DeviceXP(s.device)
    base = (1.0 - frac) * _box_means(s, r0, h, w, on) + frac * _box_means(s, r0 + 1, h, w, on)
    gain = torch.exp2(p[:, 0].double()[:, None, None] * (ANCHOR_EV - base))
    return (x * gain.to(x.dtype)[:, None]).clamp(0, 1)


class _DeviceXP:
    """`arange` on one device, for `_box_means`' index arithmetic on torch tensors."""

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def arange(self, n: int) -> torch.Tensor:
        return torch.arange(n, device=self.device)


SPEC = module_spec(
    "local_tone",
    local_tone,
    [
        ("strength", 0.0, 0.8, "EV of gain per EV the local mean is off mid-grey", 0.0),
        ("radius", 1.0, float(RADIUS_MAX), "pixels (box half-width)", 8.0),
    ],
    # On AdaptiveISP's scale, between sharpen (6.3, a 3x3 filter) and denoise (10.0): a box filter at two radii
    # with a log and an exp per pixel; its NumPy reference takes about as long as the tone curve's at 256^2.
    cost=8.0,
    twin=local_tone_twin,
)
