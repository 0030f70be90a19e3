"""The built-in task kinds (`BUILTIN_KINDS`, registered by `posisp_dist.tasks.registry`): the CenterNet-style
detector and segmenter trained on the built-in scenes; ultralytics YOLO and YOLO-seg, and torchvision detectors
and Mask R-CNN (the user's weights, or trained here with the library's trainer or a short loop); the known-answer
brightness task. Each builder imports its model only when called."""

from __future__ import annotations

import io
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from posisp_dist.tasks.base import DETECTION_METRICS, SEGMENTATION_METRICS, TaskKind
from posisp_dist.tasks.brightness import BRIGHTNESS_METRICS


def _classes(data_root: Path) -> list[str]:
    from posisp_dist.data.shards import RawDataset

    return RawDataset(data_root, "train").classes


def _scratch_file(weights: Any, suffix: str) -> str:
    """The adapters' libraries load from a path: a private scratch file on this node, not the shared disk."""
    fd, path = tempfile.mkstemp(prefix="posisp-task-", suffix=suffix)
    with os.fdopen(fd, "wb") as f:
        f.write(memoryview(weights))
    return path


def _model_class(segmenter: bool) -> Any:
    if segmenter:
        from posisp_dist.tasks.segmenter import BuiltinSegmenter

        return BuiltinSegmenter
    from posisp_dist.tasks.detector import BuiltinDetector

    return BuiltinDetector


def _builtin(name: str, segmenter: bool, metrics: Any, description: str) -> TaskKind:
    """The built-in detector or segmenter: trained once on the clean renders, cached by fingerprint."""

    def build(cfg: Any, root: Path, progress: bool, device: str | None) -> Any:
        from posisp_dist.tasks.detector import load_or_train_detector
        from posisp_dist.tasks.shipped import install_shipped

        if install_shipped(cfg, root, _model_class(segmenter)) and progress:  # the default config's, in the package
            print(f"{name.replace('_', ' ')}: the one shipped with posisp-dist for this data and training config "
                  "(no training needed)", file=sys.stderr)
        return load_or_train_detector(cfg, root, progress, device, _model_class(segmenter))

    def weights_path(cfg: Any, root: Path) -> Path:
        from posisp_dist.data.shards import RawDataset
        from posisp_dist.tasks.detector import detector_path

        return detector_path(cfg, RawDataset(root, "train"), _model_class(segmenter))

    def from_weights(cfg: Any, classes: list[str], weights: Any, device: str | None) -> Any:
        import torch

        from posisp_dist.tasks.detector import detector_from_state

        state = torch.load(io.BytesIO(memoryview(weights)), map_location="cpu", weights_only=True)
        return detector_from_state(cfg, classes, state, device, _model_class(segmenter))

    return TaskKind(name, build=build, metrics=metrics, weights_path=weights_path, from_weights=from_weights,
                    description=description)


def _yolo_class(cfg: Any) -> Any:
    from posisp_dist.tasks.yolo import YoloDetector, YoloSegmenter

    return YoloSegmenter if cfg.kind == "ultralytics_seg" else YoloDetector


def _yolo(cfg: Any, classes: list[str], path: str | Path, device: str | None) -> Any:
    return _yolo_class(cfg).from_file(
        path, classes, signal=cfg.signal, loss_clip=cfg.loss_clip, detection_scale=cfg.detection_scale,
        conf=cfg.score_threshold, iou=cfg.iou, max_det=cfg.max_det, imgsz=cfg.imgsz, batch_size=cfg.batch_size,
        device=device,
    )


def _yolo_train(cfg: Any, root: Path, progress: bool) -> Path:
    from posisp_dist.tasks.yolo_train import train_yolo

    return train_yolo(cfg, root, progress)


def _yolo_trained_path(cfg: Any, root: Path) -> Path:
    from posisp_dist.tasks.yolo_train import yolo_weights_path

    return yolo_weights_path(cfg, root)


def _torchvision_model(cfg: Any, classes: list[str], path: str | Path, device: str | None) -> Any:
    from posisp_dist.tasks.torchvision_models import from_config

    return from_config(cfg, classes, path, device)


def _torchvision_train(cfg: Any, root: Path, progress: bool) -> Path:
    from posisp_dist.tasks.torchvision_train import train_torchvision

    return train_torchvision(cfg, root, progress)


def _torchvision_trained_path(cfg: Any, root: Path) -> Path:
    from posisp_dist.tasks.torchvision_train import torchvision_weights_path

    return torchvision_weights_path(cfg, root)


def _library(name: str, metrics: Any, description: str, load: Any, train: Any, trained_path: Any) -> TaskKind:
    """A library model (ultralytics, torchvision) from the user's `weights`, or else trained here on the built-in
    renders and cached: load(cfg, classes, path, device), train(cfg, root, progress) -> path,
    trained_path(cfg, root) -> where `train` puts it."""

    def build(cfg: Any, root: Path, progress: bool, device: str | None) -> Any:
        path = str(cfg.weights) if cfg.weights else train(cfg, root, progress)
        return load(cfg, _classes(root), path, device)

    def weights_path(cfg: Any, root: Path) -> Path:
        return Path(str(cfg.weights)) if cfg.weights else trained_path(cfg, root)

    def from_weights(cfg: Any, classes: list[str], weights: Any, device: str | None) -> Any:
        path = _scratch_file(weights, ".pt")
        try:
            return load(cfg, classes, path, device)
        finally:
            os.unlink(path)

    return TaskKind(name, build=build, metrics=metrics, weights_path=weights_path, from_weights=from_weights,
                    description=description)


def _brightness(cfg: Any, classes: list[str]) -> Any:
    from posisp_dist.tasks.brightness import BrightnessTarget

    return BrightnessTarget(classes, cfg.brightness_target)


BUILTIN_KINDS = (
    _builtin("builtin_detector", False, DETECTION_METRICS, "the built-in CenterNet-style detector"),
    _builtin("builtin_segmenter", True, SEGMENTATION_METRICS, "the built-in instance segmenter (detector + masks)"),
    _library("torchvision", DETECTION_METRICS, "a torchvision detection model (a builder + state_dict, a pickled "
             "model, or trained here)", _torchvision_model, _torchvision_train, _torchvision_trained_path),
    _library("torchvision_seg", SEGMENTATION_METRICS, "a torchvision Mask R-CNN (a builder + state_dict, a pickled "
             "model, or trained here)", _torchvision_model, _torchvision_train, _torchvision_trained_path),
    _library("ultralytics", DETECTION_METRICS, "an ultralytics YOLO detector (user weights, or trained here)", _yolo,
             _yolo_train, _yolo_trained_path),
    _library("ultralytics_seg", SEGMENTATION_METRICS, "an ultralytics YOLO-seg model (user weights, or trained "
             "here)", _yolo, _yolo_train, _yolo_trained_path),
    TaskKind(
        "brightness_target",
        build=lambda cfg, root, progress, device: _brightness(cfg, _classes(root)),
        metrics=BRIGHTNESS_METRICS,
        from_weights=lambda cfg, classes, weights, device: _brightness(cfg, classes),
        description="known-answer task: hit a target mean luminance",
    ),
)
