"""Frozen downstream task models behind one interface (`TaskModel`), built by kind from one registry
(`posisp_dist.tasks.registry`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from posisp_dist.task_config import TaskConfig
from posisp_dist.tasks.base import Metric, TaskModel
from posisp_dist.tasks.registry import TaskKind, register_task, task_kind


def load_task_model(
    cfg: TaskConfig, data_root: str | Path, progress: bool = True, device: str | None = None
) -> TaskModel:
    """Build the configured task model (its kind from the registry, after importing `task.module`)."""
    return task_kind(cfg.kind, cfg.module).build(cfg, Path(data_root), progress, device)


def task_weights_path(cfg: TaskConfig, data_root: str | Path) -> Path | None:
    """The file holding the task model's weights (after `load_task_model` made it), or None if it has none."""
    kind = task_kind(cfg.kind, cfg.module)
    return kind.weights_path(cfg, Path(data_root)) if kind.weights_path else None


def task_model_from_weights(cfg: TaskConfig, classes: list[str], weights: Any, device: str | None = None) -> TaskModel:
    """The task model rebuilt from the bytes of its weights file, reading neither `data.root` nor `cache_dir`:
    how an EnvRunner on a node without the shared disk gets it (see `posisp_dist.data.transport`)."""
    kind = task_kind(cfg.kind, cfg.module)
    if kind.from_weights is None:
        raise ValueError(f"task kind {cfg.kind!r} cannot be rebuilt from shipped weights (no from_weights)")
    if weights is None and kind.weights_path is not None:
        raise ValueError(f"task kind {cfg.kind!r} needs its weights, but none were shipped")
    return kind.from_weights(cfg, classes, weights, device)


def task_metrics(cfg: TaskConfig) -> tuple[Metric, ...]:
    """The metrics the configured task reports, primary first (from its registry entry; no model is built)."""
    return task_kind(cfg.kind, cfg.module).metrics


__all__ = [
    "Metric", "TaskKind", "TaskModel", "load_task_model", "register_task", "task_metrics", "task_model_from_weights",
    "task_weights_path",
]
