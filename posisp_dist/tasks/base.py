"""The one interface every frozen task model offers to the rest of the system.

A model may also offer `fingerprint() -> str | None`: a stable hash of everything that decides its
`score` (weights and score settings). The shared score cache keys reference scores and eval results by it;
a model without one is simply not cached.

A model may also offer `loss_and_score(images: torch.Tensor, targets) -> (loss, score)`: from one forward
pass of NCHW images in [0, 1], the (B,) per-image task loss as a tensor differentiable in the images, and
the (B,) `score` signal. The pathwise parameter learner (`policy.param_learning: pathwise`) backpropagates
the loss through the ISP's torch twin; a model without it can only be trained with `param_learning: ppo`
(`require_differentiable` says so by name).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

Targets = list[dict[str, np.ndarray]]  # per image: boxes (k, 4) x0 y0 x1 y1 pixels, labels (k,)
Detections = list[dict[str, np.ndarray]]  # per image: boxes (n, 4), scores (n,), labels (n,)


@dataclass(frozen=True)
class Metric:
    """One dataset metric a task reports: its key in eval rows and MLflow (`eval/<split>_<key>`), a label for
    tables and figures, its direction and unit."""

    key: str
    label: str
    higher_is_better: bool = True
    unit: str = "%"

    def better(self, a: float, b: float | None) -> bool:
        """Is `a` better than `b` (None: nothing yet)?"""
        return b is None or (a > b if self.higher_is_better else a < b)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


DETECTION_METRICS = (Metric("map", "mAP@.5:.95"), Metric("map50", "mAP@.5"))
SEGMENTATION_METRICS = (Metric("mask_map", "mask mAP@.5:.95"), Metric("mask_map50", "mask mAP@.5"))


@dataclass(frozen=True)
class TaskKind:
    """How to make one kind of frozen task model.

    build(task_cfg, data_root, progress, device) -> model: made (or loaded from a cache) on this node;
    weights_path(task_cfg, data_root) -> the file holding its weights after `build`, or None if it has none;
    from_weights(task_cfg, classes, weight_bytes, device) -> model: rebuilt from shipped bytes (object-store
    transport), reading neither `data.root` nor `task.cache_dir`; None: `build` is cheap and reads no disk.
    """

    name: str
    build: Callable[[Any, Path, bool, str | None], Any]
    metrics: tuple[Metric, ...]
    weights_path: Callable[[Any, Path], Path | None] | None = None
    from_weights: Callable[[Any, list[str], Any, str | None], Any] | None = None
    description: str = ""

    def __post_init__(self) -> None:
        if not self.metrics:
            raise ValueError(f"task kind {self.name!r} must declare at least one metric (the primary one first)")

    @property
    def primary(self) -> Metric:
        return self.metrics[0]



@runtime_checkable
class TaskModel(Protocol):
    """A frozen downstream model. Images are float (B, H, W, 3) in [0, 1], NumPy or CuPy. `metrics` names
    what `evaluate` returns, primary metric first (the one val selection and the headline tables use)."""

    classes: list[str]
    metrics: tuple[Metric, ...]

    def score(self, images: Any, targets: Targets) -> np.ndarray:
        """Per-image training signal, higher is better (the negative, clipped task loss)."""
        ...

    def predict(self, images: Any) -> Detections:
        """Detections per image."""
        ...

    def evaluate(self, images: Any, targets: Targets) -> dict[str, float]:
        """Dataset metrics, keyed by `metrics` (a detector: COCO mAP@.5:.95 'map' and mAP@.5 'map50', %)."""
        ...

    def loss_and_score(self, images: Any, targets: Targets) -> tuple[Any, np.ndarray]:
        """One forward pass of (B, 3, H, W) torch images in [0, 1] -> ((B,) loss differentiable in the images,
        (B,) `score` of the same pass). Weights frozen, BatchNorm in eval; image i's loss depends on image i only."""
        ...

    @property
    def device(self) -> Any:
        """The torch device the model runs on (where `loss_and_score` wants its images)."""
        ...

    def fingerprint(self) -> str | None:
        """A stable hash of everything that decides `score` (weights, settings); None: never cached."""
        ...


def require_differentiable(task: Any) -> None:
    """Raise naming the task model when it cannot serve the pathwise learner."""
    if not callable(getattr(task, "loss_and_score", None)):
        raise TypeError(
            f"task model {type(task).__name__} has no loss_and_score, so policy.param_learning: pathwise "
            "cannot backpropagate through it; use policy.param_learning: ppo for this task"
        )


def to_torch_nchw(images: Any, device: Any) -> Any:
    """(B, H, W, 3) NumPy/CuPy -> (B, 3, H, W) float32 torch tensor; CuPy goes through DLPack (no host copy)."""
    import torch

    if isinstance(images, np.ndarray):
        t = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))
    elif isinstance(images, torch.Tensor):
        t = images
    else:  # CuPy or any DLPack producer
        t = torch.from_dlpack(images)
    if t.ndim != 4 or t.shape[-1] != 3:
        raise ValueError(f"images must be shaped (B, H, W, 3), got {tuple(t.shape)}")
    return t.to(device=device, dtype=torch.float32).permute(0, 3, 1, 2).contiguous()


def state_dict_hash(module: Any) -> str:
    """Stable hash of a torch module's parameters and buffers (names, dtypes, shapes and bytes)."""
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        a = t.detach().cpu().contiguous().numpy() if hasattr(t, "detach") else np.asarray(t)
        h.update(f"{name}|{a.dtype}|{a.shape}|".encode() + a.tobytes())
    return h.hexdigest()[:16]
