"""The `TaskModel` contract of a frozen detection library's model (ultralytics, torchvision), written once.

A library adapter supplies one method, `_pass(x, targets, want_dets) -> (loss, dets)`: for a (B, 3, H, W)
torch batch in [0, 1] on its device, the (B,) per-image task loss (when `targets` are given; differentiable
in `x` under autograd) and the decoded detections (when asked). `FrozenDetector` turns that into `score`,
`loss_and_score`, `predict` and `evaluate`, so that `score` is by construction what `loss_and_score`
returns; `MaskScoring` switches the metrics and the per-image AP to instance masks.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from posisp_dist.tasks.base import DETECTION_METRICS, SEGMENTATION_METRICS, Detections, Targets, to_torch_nchw
from posisp_dist.tasks.metrics import coco_map, coco_mask_map, per_image_ap, per_image_mask_ap
from posisp_dist.tasks.signals import task_signal


def torch_device(device: str | None) -> torch.device:
    return torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))


def freeze(net: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """The network on `device`, in eval mode (BatchNorm uses its running statistics), no parameter trainable."""
    net = net.to(device).eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return net


class FrozenDetector:
    """Everything but the forward pass of a frozen library detector (see the module docstring)."""

    metrics = DETECTION_METRICS
    signals = ("loss", "ap")
    kind = "detector"
    classes: list[str]
    device: torch.device
    batch_size: int = 64
    calls: int = 0

    def _pass(self, x: torch.Tensor, targets: Targets | None, want_dets: bool) -> tuple[Any, Detections | None]:
        raise NotImplementedError

    def _scoring(self, signal: str, loss_clip: float, detection_scale: float) -> None:
        if signal not in self.signals:
            raise ValueError(f"unknown task signal {signal!r} for {self.kind}; expected one of {self.signals}")
        self.signal, self.loss_clip, self.detection_scale = signal, loss_clip, detection_scale

    def loss_and_score(self, images: torch.Tensor, targets: Targets) -> tuple[torch.Tensor, np.ndarray]:
        """NCHW images in [0, 1] -> (B,) loss differentiable in the images, (B,) `score` of the same pass."""
        _check_targets(images, targets)
        loss, dets = self._pass(images.to(self.device), targets, self.signal == "ap")
        return loss, self._signal(loss.detach().cpu().numpy(), dets, targets)

    @torch.no_grad()  # not inference_mode: some heads cache tensors (anchors) later used under autograd
    def score(self, images: Any, targets: Targets) -> np.ndarray:
        """(B,) the same signal as `loss_and_score`, for (B, H, W, 3) NumPy/CuPy images."""
        _check_targets(images, targets)
        out = []
        for s, x in self._chunks(images):
            tg = targets[s : s + self.batch_size]
            loss, dets = self._pass(x, tg, self.signal == "ap")
            out.append(self._signal(loss.cpu().numpy(), dets, tg))
        return np.concatenate(out)

    @torch.no_grad()
    def predict(self, images: Any) -> Detections:
        dets: Detections = []
        for _, x in self._chunks(images):
            dets += self._pass(x, None, True)[1] or []
        return dets

    def evaluate(self, images: Any, targets: Targets) -> dict[str, float]:
        return coco_map(self.predict(images), targets, len(self.classes), tuple(images.shape[1:3]))

    @staticmethod
    def image_ap(dets: Detections, targets: Targets) -> np.ndarray:
        return per_image_ap(dets, targets)

    def _signal(self, loss: np.ndarray, dets: Detections | None, targets: Targets) -> np.ndarray:
        return task_signal(self.signal, loss, dets, targets, self.loss_clip, self.detection_scale, self.image_ap)

    def _chunks(self, images: Any) -> Iterator[tuple[int, torch.Tensor]]:
        for s in range(0, images.shape[0], self.batch_size):
            yield s, to_torch_nchw(images[s : s + self.batch_size], self.device)


class MaskScoring:
    """Instance segmentation: mask mAP and the per-image mask AP (detections carry `masks` (n, H, W) bool)."""

    metrics = SEGMENTATION_METRICS
    classes: list[str]

    @staticmethod
    def image_ap(dets: Detections, targets: Targets) -> np.ndarray:
        return per_image_mask_ap(dets, targets)

    def evaluate(self, images: Any, targets: Targets) -> dict[str, float]:
        return coco_mask_map(self.predict(images), targets, len(self.classes))  # type: ignore[attr-defined]


def _check_targets(images: Any, targets: Targets) -> None:
    if len(targets) != images.shape[0]:
        raise ValueError(f"{images.shape[0]} images but {len(targets)} targets")
