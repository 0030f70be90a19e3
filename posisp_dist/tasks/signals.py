"""The per-image training signals a detector or segmenter offers (`task.signal`), from one forward pass."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from posisp_dist.tasks.base import Detections, Targets
from posisp_dist.tasks.metrics import prediction_score


def task_signal(
    signal: str, loss: np.ndarray, dets: Detections | None, targets: Targets, loss_clip: float, scale: float,
    image_ap: Callable[[Detections, Targets], np.ndarray],
) -> np.ndarray:
    """(B,) signal, higher is better: -clip(loss) ('loss', the paper's), the image's own AP@[.5:.95] x scale
    ('ap', by `image_ap`), detection quality (matched confidence x IoU) x scale ('detection'), or the last two
    summed ('mixed')."""
    neg_loss = -np.clip(np.asarray(loss, np.float64), 0.0, loss_clip)
    if signal == "loss":
        return neg_loss
    if dets is None:
        raise ValueError(f"task signal {signal!r} needs the decoded detections")
    if signal == "ap":
        return scale * image_ap(dets, targets).astype(np.float64)
    quality = scale * prediction_score(dets, targets).astype(np.float64)
    return quality if signal == "detection" else quality + neg_loss
