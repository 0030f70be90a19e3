"""A small CenterNet-style detector (heatmap + size + offset at stride 4) and its per-image loss."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from posisp_dist.tasks.base import Detections, Targets

STRIDE = 4


def _block(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class CenterNet(nn.Module):
    """Encoder to stride 8, one upsampling step with a stride-4 skip, three 1x1 heads."""

    def __init__(self, n_classes: int, width: int = 32) -> None:
        super().__init__()
        w = width
        self.stage1 = nn.Sequential(_block(3, w, 2), _block(w, w))  # /2
        self.stage2 = nn.Sequential(_block(w, 2 * w, 2), _block(2 * w, 2 * w))  # /4
        self.stage3 = nn.Sequential(_block(2 * w, 4 * w, 2), _block(4 * w, 4 * w), _block(4 * w, 4 * w))  # /8
        self.fuse = _block(4 * w + 2 * w, 2 * w)
        self.heatmap = nn.Conv2d(2 * w, n_classes, 1)
        self.size = nn.Conv2d(2 * w, 2, 1)
        self.offset = nn.Conv2d(2 * w, 2, 1)
        nn.init.constant_(self.heatmap.bias, -2.19)  # prior p = 0.1 on every cell (CenterNet)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, 2w, H/4, W/4): the fused stride-4 features every head reads."""
        f4 = self.stage2(self.stage1(x))
        f8 = self.stage3(f4)
        return self.fuse(torch.cat([F.interpolate(f8, size=f4.shape[-2:], mode="nearest"), f4], 1))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        f = self.features(x)
        return {"heatmap": self.heatmap(f), "size": self.size(f), "offset": self.offset(f)}


def encode_targets(targets: Targets, n_classes: int, hw: tuple[int, int]) -> dict[str, torch.Tensor]:
    """Gaussian centre heatmaps and dense size/offset targets at stride 4 for a batch of annotations."""
    h, w = hw[0] // STRIDE, hw[1] // STRIDE
    b = len(targets)
    heat = np.zeros((b, n_classes, h, w), np.float32)
    size = np.zeros((b, 2, h, w), np.float32)
    offset = np.zeros((b, 2, h, w), np.float32)
    mask = np.zeros((b, h, w), np.float32)
    ys, xs = np.arange(h)[:, None], np.arange(w)[None, :]
    for i, t in enumerate(targets):
        for box, lab in zip(t["boxes"], t["labels"], strict=True):
            cx, cy = (box[0] + box[2]) / 2 / STRIDE, (box[1] + box[3]) / 2 / STRIDE
            bw, bh = (box[2] - box[0]) / STRIDE, (box[3] - box[1]) / STRIDE
            ix, iy = min(int(cx), w - 1), min(int(cy), h - 1)
            sigma = max(np.sqrt(bw * bh) / 6.0, 0.5)  # 0.5: tiny objects still get a peak wider than one cell
            g = np.exp(-((xs - ix) ** 2 + (ys - iy) ** 2) / (2 * sigma * sigma))
            heat[i, int(lab)] = np.maximum(heat[i, int(lab)], g)
            size[i, :, iy, ix] = np.log([max(bw, 1e-3), max(bh, 1e-3)])
            offset[i, :, iy, ix] = (cx - ix, cy - iy)
            mask[i, iy, ix] = 1.0
    return {k: torch.from_numpy(v) for k, v in (("heatmap", heat), ("size", size), ("offset", offset), ("mask", mask))}


def per_image_loss(out: dict[str, torch.Tensor], tgt: dict[str, torch.Tensor]) -> torch.Tensor:
    """(B,) CenterNet loss: penalty-reduced focal loss on heatmaps + L1 on log-size and offset at centres."""
    p = torch.sigmoid(out["heatmap"]).clamp(1e-4, 1 - 1e-4)  # keep log() finite
    gt = tgt["heatmap"]
    pos = gt.eq(1).float()
    pos_term = torch.log(p) * (1 - p) ** 2 * pos
    neg_term = torch.log(1 - p) * p**2 * (1 - gt) ** 4 * (1 - pos)
    n_pos = pos.sum(dim=(1, 2, 3)).clamp(min=1.0)
    focal = -(pos_term + neg_term).sum(dim=(1, 2, 3)) / n_pos
    m = tgt["mask"][:, None]
    n_m = tgt["mask"].sum(dim=(1, 2)).clamp(min=1.0)
    size_l1 = ((out["size"] - tgt["size"]).abs() * m).sum(dim=(1, 2, 3)) / n_m
    off_l1 = ((out["offset"] - tgt["offset"]).abs() * m).sum(dim=(1, 2, 3)) / n_m
    return focal + 0.5 * size_l1 + off_l1


@torch.inference_mode()
def decode(out: dict[str, torch.Tensor], top_k: int = 50, min_score: float = 0.01) -> Detections:
    """Peaks of the heatmap (3x3 max-pool NMS) -> boxes in input pixels, decoded for the whole batch at
    once; the per-image lists are views into one host copy."""
    heat = torch.sigmoid(out["heatmap"])
    b, c, h, w = heat.shape
    peaks = heat * (F.max_pool2d(heat, 3, 1, 1) == heat)
    scores, idx = peaks.reshape(b, -1).topk(min(top_k, c * h * w))  # sorted: kept detections are a prefix
    labels, cell = idx // (h * w), idx % (h * w)
    at_peaks = cell[:, None, :].expand(b, 2, cell.shape[1])
    off = out["offset"].reshape(b, 2, -1).gather(2, at_peaks)
    sz = torch.exp(out["size"].reshape(b, 2, -1).gather(2, at_peaks).clamp(max=8.0)) * STRIDE  # no overflow
    cx, cy = ((cell % w).float() + off[:, 0]) * STRIDE, ((cell // w).float() + off[:, 1]) * STRIDE
    boxes = torch.stack([cx - sz[:, 0] / 2, cy - sz[:, 1] / 2, cx + sz[:, 0] / 2, cy + sz[:, 1] / 2], -1).cpu().numpy()
    counts = (scores >= min_score).sum(1).tolist()
    scores_np, labels_np = scores.cpu().numpy(), labels.cpu().numpy()
    return [
        {"boxes": boxes[i, :n], "scores": scores_np[i, :n], "labels": labels_np[i, :n]} for i, n in enumerate(counts)
    ]
