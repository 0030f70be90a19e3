"""The built-in instance segmenter: the CenterNet detector plus a per-class mask head at stride 4.

Each detected object's mask is its class's mask probability (upsampled to the image) above 0.5, inside its
box (grown by `MASK_MARGIN` pixels); its score is the detection's. Trained offline on the clean renders and
their instance maps like the detector (deterministic, cached by fingerprint), scored per image by the
CenterNet loss plus the mask loss (`signal: loss`) or 10 x the image's own mask AP (`signal: ap`), and
evaluated by pycocotools' `segm` mask mAP.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from posisp_dist.tasks.base import Detections, Targets
from posisp_dist.tasks.centernet import CenterNet, _block, decode
from posisp_dist.tasks.detector import BuiltinDetector
from posisp_dist.tasks.frozen import MaskScoring

MASK_MARGIN = 2  # pixels a box is grown by before it crops its class's mask
MASK_TOP_K = 20  # detections per image that get a mask


class SegCenterNet(CenterNet):
    """CenterNet + a per-class mask head on the same stride-4 features."""

    def __init__(self, n_classes: int, width: int = 32) -> None:
        super().__init__(n_classes, width)
        self.masks = nn.Sequential(_block(2 * width, 2 * width), nn.Conv2d(2 * width, n_classes, 1))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        f = self.features(x)
        return {"heatmap": self.heatmap(f), "size": self.size(f), "offset": self.offset(f), "masks": self.masks(f)}


def class_maps(targets: Targets, n_classes: int, hw: tuple[int, int]) -> torch.Tensor:
    """(B, C, H, W) float: per class, the union of its objects' visible masks."""
    out = np.zeros((len(targets), n_classes, *hw), np.float32)
    for i, t in enumerate(targets):
        if t["instances"].size == 0:
            raise ValueError("the segmenter needs instance masks in the annotations (shard format 2)")
        for k, lab in enumerate(t["labels"]):
            out[i, int(lab)] += t["instances"] == k + 1
    return torch.from_numpy(np.minimum(out, 1.0))


class BuiltinSegmenter(MaskScoring, BuiltinDetector):
    """Frozen `SegCenterNet` behind the `TaskModel` interface (see the module docstring)."""

    net_class = SegCenterNet
    kind = "builtin_segmenter"
    cache_prefix = "segmenter"
    signals = ("loss", "ap")

    @staticmethod
    def head_loss(pred: dict[str, torch.Tensor], targets: Targets, hw: tuple[int, int]) -> torch.Tensor:
        """(B,) CenterNet loss + the mean per-pixel binary cross-entropy of the class masks (full resolution)."""
        det = BuiltinDetector.head_loss(pred, targets, hw)
        logits = F.interpolate(pred["masks"], size=tuple(hw), mode="bilinear", align_corners=False)
        maps = class_maps(targets, logits.shape[1], tuple(hw)).to(logits.device)
        return det + F.binary_cross_entropy_with_logits(logits, maps, reduction="none").mean(dim=(1, 2, 3))

    def decode_batch(self, pred: dict[str, torch.Tensor], hw: tuple[int, int]) -> Detections:
        """Detections (top `MASK_TOP_K`) with `masks` (n, H, W) bool: the class mask inside the grown box."""
        dets = decode(pred, top_k=MASK_TOP_K, min_score=self.score_threshold)
        probs = torch.sigmoid(F.interpolate(pred["masks"], size=tuple(hw), mode="bilinear", align_corners=False))
        fg = (probs > 0.5).cpu().numpy()
        h, w = hw
        ys, xs = np.arange(h)[:, None], np.arange(w)[None, :]
        for i, d in enumerate(dets):
            b = d["boxes"]
            x0, y0 = b[:, 0, None, None] - MASK_MARGIN, b[:, 1, None, None] - MASK_MARGIN
            x1, y1 = b[:, 2, None, None] + MASK_MARGIN, b[:, 3, None, None] + MASK_MARGIN
            inside = (xs[None] >= x0) & (xs[None] < x1) & (ys[None] >= y0) & (ys[None] < y1)
            d["masks"] = fg[i][d["labels"]] & inside
        return dets
