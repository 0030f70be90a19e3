"""A new downstream task is one module that registers itself: this file defines a toy task (hit a target mean
red level; lower error is better), registers it, and trains it through `posisp train` for two iterations
without any edit to the package. `task.module` names this file, so every process that builds the task
imports it first; eval rows, MLflow keys and val selection take the task's own metric names."""

from __future__ import annotations

import json
import sys
from typing import Any

import numpy as np
import pytest
from conftest import tiny_train_yaml

from posisp_dist.cli import main
from posisp_dist.isp.xp import to_numpy
from posisp_dist.runs.tracking import Tracker
from posisp_dist.tasks import Metric, TaskKind, register_task
from posisp_dist.tasks.registry import task_kinds

TARGET = 0.3


class MeanRed:
    """score = -|mean red - TARGET| per image; metric: the dataset's mean absolute error x 100 (lower wins)."""

    metrics = (Metric("red_error", "mean red error x100", higher_is_better=False, unit=""),)

    def __init__(self, classes: list[str]) -> None:
        self.classes = classes

    def _err(self, images: Any) -> np.ndarray:
        return np.abs(to_numpy(images)[..., 0].reshape(images.shape[0], -1).mean(1) - TARGET).astype(np.float64)

    def score(self, images: Any, targets: Any) -> np.ndarray:
        return -self._err(images)

    def loss_and_score(self, images: Any, targets: Any) -> tuple[Any, np.ndarray]:
        loss = (images[:, 0].flatten(1).mean(1) - TARGET).abs()  # NCHW torch: differentiable in the images
        return loss, -loss.detach().cpu().numpy().astype(np.float64)

    def evaluate(self, images: Any, targets: Any) -> dict[str, float]:
        return {"red_error": 100.0 * float(self._err(images).mean())}


register_task(
    TaskKind("toy_mean_red", build=lambda cfg, root, progress, device: MeanRed(["disc"]), metrics=MeanRed.metrics,
             from_weights=lambda cfg, classes, weights, device: MeanRed(classes)),
    replace=True,  # pytest may import this file twice (collection, then `task.module`)
)


def test_a_task_registered_in_a_test_file_trains_through_posisp_train(tiny_cfg, tiny_data, ray_local, tmp_path):
    assert "toy_mean_red" in task_kinds()
    # in-process EnvRunner: this test file is importable here; a Ray actor imports `task.module` the same way
    path, uri = tiny_train_yaml(tiny_cfg, tmp_path, {"kind": "toy_mean_red", "module": __name__})
    out = tmp_path / "summary.json"
    assert main(["train", "--config", str(path), "--eval", "val", "--quiet", "--json", str(out)]) == 0
    summary = json.loads(out.read_text())
    assert summary["iterations"] == 2 and summary["task_backward_images"] > 0  # pathwise through the toy's loss
    assert summary["metrics"][0]["key"] == "red_error" and "red_error" in summary["val_metrics"]
    rows = {r["method"]: r for r in summary["eval"]["rows"]}
    assert {"camera_isp", "input_raw", "sequence_ppo"} <= set(rows) and all("red_error" in r for r in rows.values())
    tracker = Tracker(uri, "posisp")
    history = [v for _, v in tracker.history("eval/val_red_error_selection", summary["run_id"])]
    assert len(history) == 2
    # lower is better: the kept checkpoint is the iteration with the smallest val error
    assert summary["best_val_iteration"] == 1 + int(np.argmin(history))
    assert tracker.history("eval/val_red_error", summary["run_id"])


def test_an_unknown_task_kind_names_the_registered_ones(tiny_cfg):
    from conftest import with_task

    from posisp_dist.config import Config
    from posisp_dist.tasks import load_task_model

    raw = tiny_cfg.model_dump(mode="json")
    raw["task"] = with_task(raw["task"], {"kind": "segmentr"})
    with pytest.raises(ValueError, match="unknown task kind 'segmentr'; registered: .*builtin_detector"):
        Config.model_validate(raw)
    # validating a plugin kind imports no user code: the module is imported where the model is built
    raw["task"].update(kind="toy", module="no_such_module_here", options={"size": 3})
    cfg = Config.model_validate(raw)
    assert cfg.task.options == {"size": 3} and "no_such_module_here" not in sys.modules
    with pytest.raises(ValueError, match="task.module 'no_such_module_here' cannot be imported"):
        load_task_model(cfg.task, tiny_cfg.data.root)


def test_each_task_kind_owns_its_typed_fields(tiny_cfg):
    from conftest import with_task

    from posisp_dist.config import Config, UltralyticsTaskConfig

    raw = tiny_cfg.model_dump(mode="json")
    raw["task"] = with_task(raw["task"], {"kind": "ultralytics", "train": {"epochs": 2}})
    cfg = Config.model_validate(raw)
    assert isinstance(cfg.task, UltralyticsTaskConfig) and cfg.task.train.epochs == 2 and cfg.task.weights is None
    raw["task"]["brightness_target"] = 0.5  # another kind's field is refused by name
    with pytest.raises(ValueError, match="brightness_target"):
        Config.model_validate(raw)
    raw["task"] = with_task(raw["task"], {"kind": "torchvision"})
    with pytest.raises(ValueError, match="builder"):  # torchvision needs an architecture or a whole model
        Config.model_validate(raw)
