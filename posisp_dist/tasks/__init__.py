"""Frozen downstream task models behind one interface (`TaskModel`)."""

from __future__ import annotations

from pathlib import Path

from posisp_dist.config import TaskConfig
from posisp_dist.tasks.base import TaskModel


def load_task_model(
    cfg: TaskConfig, data_root: str | Path, progress: bool = True, device: str | None = None
) -> TaskModel:
    """Build the configured task model: the cached built-in detector, or an adapter around user weights."""
    if cfg.kind == "builtin_detector":
        from posisp_dist.tasks.detector import load_or_train_detector

        return load_or_train_detector(cfg, data_root, progress, device)
    from posisp_dist.data.shards import RawDataset
    from posisp_dist.tasks import adapters

    classes = RawDataset(data_root, "train").classes
    if cfg.kind == "brightness_target":
        from posisp_dist.tasks.brightness import BrightnessTarget

        return BrightnessTarget(classes, cfg.brightness_target)
    if cfg.kind == "torchvision":
        return adapters.TorchvisionDetector.from_weights(str(cfg.weights), classes, device=device)
    return adapters.UltralyticsDetector.from_weights(str(cfg.weights), classes)


__all__ = ["TaskModel", "load_task_model"]
