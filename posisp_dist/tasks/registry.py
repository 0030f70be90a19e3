"""The one registry of task kinds: `task.kind` in a config names an entry, and the entry says how to build
the frozen model (from the config, or from shipped weight bytes on a node without the shared disk), where its
weights live and which metrics it reports (primary first).

A new task is one module that defines its model and calls `register_task`; point `task.module` at that
module and every process (the driver, each EnvRunner) imports it before it builds the task model:

    register_task(TaskKind("my_segmenter", build=lambda cfg, root, progress, device: MySegmenter(...),
                           metrics=(Metric("mask_map", "mask mAP@.5:.95"),)))

This module imports nothing heavy: the built-in kinds' builders import their models when called.
"""

from __future__ import annotations

import importlib

from posisp_dist.tasks.base import Metric, TaskKind

__all__ = ["Metric", "TaskKind", "import_task_module", "register_task", "task_kind", "task_kinds", "unregister_task"]


_KINDS: dict[str, TaskKind] = {}


def register_task(kind: TaskKind, replace: bool = False) -> TaskKind:
    """Add a task kind; registering a taken name is an error unless `replace`."""
    if kind.name in _KINDS and not replace:
        raise ValueError(f"task kind {kind.name!r} is already registered")
    _KINDS[kind.name] = kind
    return kind


def unregister_task(name: str) -> None:
    _KINDS.pop(name, None)


def import_task_module(module: str | None) -> None:
    """Import the user module that registers a task kind (`task.module`); its import error names it."""
    if not module:
        return
    try:
        importlib.import_module(module)
    except ImportError as exc:
        raise ValueError(f"task.module {module!r} cannot be imported: {exc}") from exc
    except Exception as exc:  # noqa: BLE001 (the user's module failed while importing: name it and the cause)
        raise ValueError(f"task.module {module!r} failed while importing: {type(exc).__name__}: {exc}") from exc


def task_kind(name: str, module: str | None = None) -> TaskKind:
    """The registered kind `name` (after importing `module`); ValueError naming the registered kinds."""
    _register_builtins()
    import_task_module(module)
    if name not in _KINDS:
        raise ValueError(f"unknown task kind {name!r}; registered: {tuple(_KINDS)}")
    return _KINDS[name]


def task_kinds() -> tuple[str, ...]:
    _register_builtins()
    return tuple(_KINDS)


def _register_builtins() -> None:
    if "builtin_detector" not in _KINDS:
        from posisp_dist.tasks.builtin import BUILTIN_KINDS

        for kind in BUILTIN_KINDS:
            _KINDS.setdefault(kind.name, kind)
