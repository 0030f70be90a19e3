"""Grey-world white balance: per-channel gains that make the image's channel means equal, blended in by strength.

A raw's colour cast is large: Brooks et al.'s unprocessing (the built-in data) divides red by 1.9-2.4 and blue
by 1.5-1.9, and a real camera's raw without its white balance looks the same. The paper's `white_balance`
moves each channel by at most 10 % (POS-ISP's range), and its `ccm` keeps greys grey (rows sum to 1), so the
paper's ten cannot undo such a cast in one step; a fixed camera ISP does it with grey-world gains. This module
is that step, image-adaptive and differentiable:

    g_c = 1 / mean_c(img),   g <- g / (0.27 g_r + 0.67 g_g + 0.06 g_b)   (normalised as `white_balance`'s)
    out = clip(img * (1 + strength * (g - 1)), 0, 1)

`strength` = 0 is the identity; 1 makes the three channel means equal (before the clip). The luminance
weights sum to 1, so every blend keeps 0.27 g_r + 0.67 g_g + 0.06 g_b at 1 (a grey pixel keeps its level):
brightness is left to `exposure`. A channel whose mean is under 1/1000 of the brightest channel's counts as
at that floor, which bounds the gains of near-monochrome images. Both repositories of the paper define a
GrayWorld WB filter that their module list leaves out (reference/paper.md §3.1); this one is opt-in the same
way (`isp.modules`).
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import torch

from posisp_dist.isp.modules import LUMA
from posisp_dist.isp.registry import module_spec

MEAN_FLOOR = 1e-3  # a channel mean is at least this fraction of the brightest channel's (and above 1e-8)


def grey_world(img: Any, params: Any, xp: ModuleType) -> Any:
    """Blend towards grey-world gains (equal channel means), normalised as white_balance's; 0 is the identity."""
    means = img.reshape(img.shape[0], -1, 3).astype(xp.float64).mean(axis=1)
    floor = MEAN_FLOOR * xp.maximum(means.max(axis=1, keepdims=True), 1e-8)
    g = 1.0 / xp.maximum(means, floor)
    g = g / (g[:, 0:1] * LUMA[0] + g[:, 1:2] * LUMA[1] + g[:, 2:3] * LUMA[2])
    gains = (1.0 + params[:, 0:1].astype(xp.float64) * (g - 1.0)).astype(xp.float32)
    return xp.clip(img * gains[:, None, None, :], 0.0, 1.0).astype(xp.float32, copy=False)


def grey_world_twin(x: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """`grey_world` on NCHW tensors, differentiable in the image (through its channel means) and the strength."""
    means = x.double().mean(dim=(2, 3))
    floor = MEAN_FLOOR * means.max(dim=1, keepdim=True).values.clamp_min(1e-8)
    g = 1.0 / torch.maximum(means, floor)
    g = g / (g[:, 0:1] * LUMA[0] + g[:, 1:2] * LUMA[1] + g[:, 2:3] * LUMA[2])
    gains = 1.0 + p[:, 0:1].double() * (g - 1.0)
    return (x * gains.to(x.dtype)[:, :, None, None]).clamp(0, 1)


SPEC = module_spec(
    "grey_world",
    grey_world,
    [("strength", 0.0, 1.0, "blend towards the grey-world gains", 0.0)],
    # On AdaptiveISP's scale: the white balance's per-pixel gain (1.7) plus one mean over the image.
    cost=1.8,
    twin=grey_world_twin,
)
