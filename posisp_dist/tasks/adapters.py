"""Adapter for user-supplied torchvision detectors (ultralytics YOLO: `posisp_dist.tasks.yolo`).

Neither library is a dependency: each is imported only when its adapter loads weights, and the adapters
accept an already-built model so that anything following the library's calling convention plugs in.
Their `score` is `prediction_score` (matched confidence x IoU), since per-image losses are not exposed
uniformly by these libraries.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from posisp_dist.tasks.base import DETECTION_METRICS, Detections, Targets, state_dict_hash, to_torch_nchw
from posisp_dist.tasks.metrics import coco_map, prediction_score


class _DetectorAdapter:
    classes: list[str]
    calls: int = 0
    metrics = DETECTION_METRICS

    def predict(self, images: Any) -> Detections:
        raise NotImplementedError

    def score(self, images: Any, targets: Targets) -> np.ndarray:
        return prediction_score(self.predict(images), targets)

    def fingerprint(self) -> str | None:
        """Weights plus settings (the score cache's task key); None when the model exposes no state_dict."""
        state = getattr(getattr(self, "model", None), "state_dict", None)
        if not callable(state):
            return None
        from posisp_dist.data.shards import fingerprint

        settings = [type(self).__name__, self.classes, getattr(self, "label_offset", None)]
        return fingerprint({"weights": state_dict_hash(self.model), "settings": settings})

    def evaluate(self, images: Any, targets: Targets) -> dict[str, float]:
        return coco_map(self.predict(images), targets, len(self.classes), tuple(images.shape[1:3]))


def _as_detections(boxes: Any, scores: Any, labels: Any, label_offset: int = 0) -> dict[str, np.ndarray]:
    f = lambda t: t.detach().cpu().numpy() if hasattr(t, "detach") else np.asarray(t)  # noqa: E731
    return {
        "boxes": f(boxes).reshape(-1, 4).astype(np.float32),
        "scores": f(scores).astype(np.float32),
        "labels": f(labels).astype(np.int64) - label_offset,
    }


class TorchvisionDetector(_DetectorAdapter):
    """A torchvision-style detector: `model(list[CHW tensor]) -> list[{boxes, scores, labels}]` in eval mode.

    torchvision reserves label 0 for background, so `label_offset=1` maps its labels onto our class ids.
    """

    def __init__(self, model: Any, classes: list[str], label_offset: int = 1, device: str | None = None) -> None:
        import torch

        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model = model.to(self.device).eval()
        self.classes, self.label_offset = list(classes), label_offset

    @classmethod
    def from_weights(cls, path: str, classes: list[str], device: str | None = None) -> TorchvisionDetector:
        """Load a whole pickled torchvision model saved with `torch.save(model, path)`."""
        import torch

        try:
            model = torch.load(path, map_location="cpu", weights_only=False)
        except FileNotFoundError:
            raise FileNotFoundError(f"torchvision weights not found: {path}") from None
        if not callable(model):
            raise ValueError(f"{path} does not hold a torch.nn.Module (got {type(model).__name__})")
        return cls(model, classes, device=device)

    def predict(self, images: Any) -> Detections:
        import torch

        self.calls += 1
        with torch.inference_mode():
            out = self.model(list(to_torch_nchw(images, self.device)))
        return [_as_detections(o["boxes"], o["scores"], o["labels"], self.label_offset) for o in out]
