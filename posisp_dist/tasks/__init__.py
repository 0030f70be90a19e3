"""Frozen downstream task models behind one interface (`TaskModel`)."""

from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path
from typing import Any

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


def task_weights_path(cfg: TaskConfig, data_root: str | Path) -> Path | None:
    """The file holding the task model's weights (after `load_task_model` made it), or None if it has none."""
    if cfg.kind == "builtin_detector":
        from posisp_dist.data.shards import RawDataset
        from posisp_dist.tasks.detector import detector_path

        return detector_path(cfg, RawDataset(data_root, "train"))
    return None if cfg.kind == "brightness_target" else Path(str(cfg.weights))


def task_model_from_weights(cfg: TaskConfig, classes: list[str], weights: Any, device: str | None = None) -> TaskModel:
    """The task model rebuilt from the bytes of its weights file, reading neither `data.root` nor `cache_dir`:
    how an EnvRunner on a node without the shared disk gets it (see `posisp_dist.data.transport`)."""
    if cfg.kind == "brightness_target":
        from posisp_dist.tasks.brightness import BrightnessTarget

        return BrightnessTarget(classes, cfg.brightness_target)
    if weights is None:
        raise ValueError(f"task kind {cfg.kind!r} needs its weights, but none were shipped")
    if cfg.kind == "builtin_detector":
        import torch

        from posisp_dist.tasks.detector import detector_from_state

        state = torch.load(io.BytesIO(memoryview(weights)), map_location="cpu", weights_only=True)
        return detector_from_state(cfg, classes, state, device)
    from posisp_dist.tasks import adapters

    # the adapters' libraries load from a path: a private scratch file on this node, not the shared disk
    fd, path = tempfile.mkstemp(prefix="posisp-task-", suffix=Path(str(cfg.weights)).suffix)
    with os.fdopen(fd, "wb") as f:
        f.write(memoryview(weights))
    if cfg.kind == "torchvision":
        return adapters.TorchvisionDetector.from_weights(path, classes, device=device)
    return adapters.UltralyticsDetector.from_weights(path, classes)


__all__ = ["TaskModel", "load_task_model", "task_model_from_weights", "task_weights_path"]
