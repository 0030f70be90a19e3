"""A known-answer task for smoke tests and learning checks: hit a target mean luminance.

score(img) = -scale * |mean luminance(img) - target|. The best pipeline is known analytically: any
brightening module set so that the mean luminance equals `target` scores 0, so the optimal reward of an
image is minus its input-RAW score. It is a real `TaskModel`, buildable from config inside every
EnvRunner (`task.kind: brightness_target`), so learning tests run through the whole training stack.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from posisp_dist.isp.modules import luminance
from posisp_dist.isp.xp import array_module, to_numpy
from posisp_dist.tasks.base import Detections, Metric, Targets

BRIGHTNESS_METRICS = (
    Metric("within_tol", "images within 1 tolerance of the target luminance"),
    Metric("within_2tol", "images within 2 tolerances of the target luminance"),
)


class BrightnessTarget:
    """Score = -scale * |mean luminance - target|; the metrics: the share of images within 1 and 2 tolerances."""

    metrics = BRIGHTNESS_METRICS

    def __init__(self, classes: list[str], target: float = 0.4, scale: float = 10.0, tolerance: float = 0.05) -> None:
        if not 0.0 < target < 1.0:
            raise ValueError(f"brightness target must lie in (0, 1), got {target}")
        self.classes, self.target, self.scale, self.tolerance = list(classes), target, scale, tolerance
        self.device = "cpu"  # its loss is arithmetic on whatever device the images are on

    def fingerprint(self) -> str:
        """Everything that changes `score` (the score cache's task key)."""
        return f"brightness_target-{self.target!r}-{self.scale!r}"

    def mean_luminance(self, images: Any) -> np.ndarray:
        xp = array_module(images)
        lum = luminance(images, xp)
        return to_numpy(lum.reshape(lum.shape[0], -1).mean(axis=1)).astype(np.float64)

    def score(self, images: Any, targets: Targets) -> np.ndarray:
        return -self.scale * np.abs(self.mean_luminance(images) - self.target)

    def loss_and_score(self, images: Any, targets: Targets) -> tuple[Any, np.ndarray]:
        """NCHW torch images -> (B,) loss scale * |mean luminance - target| (differentiable) and the score,
        minus that loss."""
        from posisp_dist.isp.modules import LUMA

        lum = images[:, 0] * LUMA[0] + images[:, 1] * LUMA[1] + images[:, 2] * LUMA[2]
        loss = self.scale * (lum.flatten(1).mean(dim=1) - self.target).abs()
        return loss, -loss.detach().cpu().numpy().astype(np.float64)

    def predict(self, images: Any) -> Detections:
        empty = {"boxes": np.zeros((0, 4), np.float32), "scores": np.zeros(0, np.float32), "labels": np.zeros(0, int)}
        return [dict(empty) for _ in range(images.shape[0])]

    def evaluate(self, images: Any, targets: Targets) -> dict[str, float]:
        err = np.abs(self.mean_luminance(images) - self.target)
        within = [100.0 * float(np.mean(err < k * self.tolerance)) for k in (1, 2)]
        return {"within_tol": within[0], "within_2tol": within[1]}
