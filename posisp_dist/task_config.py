"""The task section of a config: one typed model per task kind, chosen by `kind` (a union discriminated by
it). Validating a config imports no user code: a plugin kind's module is imported where its model is built."""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import Discriminator, Field, Tag, model_validator

from posisp_dist.config_base import Strict as _Strict


class DetectorTrainConfig(_Strict):
    """Deterministic offline training of the built-in detector on clean sRGB renders."""

    steps: int = Field(1500, ge=1, description="optimiser steps")
    batch_size: int = Field(32, ge=1)
    lr: float = Field(2e-3, gt=0)
    width: int = Field(32, ge=4, description="channels of the first stage")
    seed: int = 0


class _TaskBase(_Strict):
    """What every task kind shares: its name, the plugin module that registers it, and how it is scored."""

    kind: str
    module: str | None = Field(
        None, description="importable module that registers `kind` (a new task = one module + register_task); "
        "imported by the processes that build the task model, never while a config is validated"
    )
    cache_dir: str = Field(".posisp/models", description="where trained task models are cached")
    loss_clip: float = Field(4.0, gt=0, description="per-image task loss is clipped to [0, loss_clip]")
    batch_size: int = Field(64, ge=1, description="images per task-model forward pass")
    score_threshold: float = Field(0.01, ge=0, le=1, description="detections kept for mAP")
    signal: Literal["loss", "detection", "mixed", "ap"] = Field(
        "loss",
        description="per-image score of a detector or segmenter: loss (-clip(loss), the paper's), detection "
        "(detection_scale x matched confidence x IoU), mixed (their sum) or ap (detection_scale x the image's "
        "own COCO AP@[.5:.95]: false positives at any confidence cost, as in mAP)",
    )
    detection_scale: float = Field(10.0, gt=0, description="scale of the detection-quality score")


class BuiltinTaskConfig(_TaskBase):
    """The built-in CenterNet detector or segmenter, trained once on the clean renders and cached."""

    kind: Literal["builtin_detector", "builtin_segmenter"] = "builtin_detector"
    train: DetectorTrainConfig = DetectorTrainConfig()


class YoloTrainConfig(_Strict):
    """Training a YOLO from scratch with ultralytics' own trainer on the built-in clean renders (used when
    `weights` is not given; deterministic given `seed`, cached by fingerprint)."""

    model: str = Field("yolov8n", description="an ultralytics model YAML name without '.yaml' (yolov8n, yolo11n, "
                       "...); '-seg' is added for ultralytics_seg")
    scale: tuple[float, int | float, int] | None = Field(
        None, description="(depth, width, max channels) multiples overriding the model name's own scale"
    )
    epochs: int = Field(30, ge=1)
    imgsz: int = Field(128, ge=32, description="training image size (a multiple of the model stride, 32)")
    batch_size: int = Field(32, ge=1)
    lr: float = Field(0.002, gt=0, description="initial learning rate (lr0)")
    optimizer: Literal["SGD", "Adam", "AdamW"] = "AdamW"
    mosaic: float = Field(1.0, ge=0, le=1, description="mosaic augmentation probability")
    close_mosaic: int = Field(5, ge=0, description="last epochs trained without mosaic")
    seed: int = 0

    @model_validator(mode="after")
    def _check(self) -> YoloTrainConfig:
        if self.imgsz % 32:
            raise ValueError(f"task.train.imgsz must be a multiple of 32 (the YOLO stride), got {self.imgsz}")
        return self


class UltralyticsTaskConfig(_TaskBase):
    """An ultralytics YOLO detector (`ultralytics`) or instance segmenter (`ultralytics_seg`): the user's own
    `weights` (a `best.pt`), or, without them, one trained from scratch on the built-in renders (`train`)."""

    kind: Literal["ultralytics", "ultralytics_seg"]
    weights: str | None = Field(None, description="the user's trained ultralytics checkpoint (e.g. runs/.../best.pt)")
    train: YoloTrainConfig = YoloTrainConfig()
    imgsz: int | None = Field(None, ge=32, description="inference size (letterbox); None: the size it trained at")
    iou: float = Field(0.7, gt=0, le=1, description="NMS IoU threshold (ultralytics' default)")
    max_det: int = Field(300, ge=1, description="detections kept per image after NMS")
    signal: Literal["loss", "ap"] = Field("ap", description="loss: -clip(ultralytics' own loss) | ap: "
                                          "detection_scale x the image's own AP@[.5:.95]")


class TorchvisionTrainConfig(_Strict):
    """The short training loop of a torchvision detector on the built-in clean renders (used when `weights` is
    not given; `posisp_dist.tasks.torchvision_train`)."""

    epochs: int = Field(12, ge=1)
    batch_size: int = Field(16, ge=1)
    lr: float = Field(1e-3, gt=0, description="AdamW peak learning rate (one-cycle schedule)")
    weight_decay: float = Field(1e-4, ge=0)
    seed: int = 0


class TorchvisionTaskConfig(_TaskBase):
    """A torchvision detection model (`torchvision`) or Mask R-CNN (`torchvision_seg`): a builder and a
    state_dict file, a whole pickled model, or (no `weights`) the builder trained here on the built-in renders."""

    kind: Literal["torchvision", "torchvision_seg"]
    builder: str | None = Field(
        None, description="a builder of torchvision.models.detection (fcos_resnet50_fpn, maskrcnn_resnet50_fpn, ...) "
        "or package.module:function; always called with weights=None, weights_backbone=None; None: `weights` is a "
        "whole pickled model"
    )
    options: dict[str, Any] = Field(default_factory=dict, description="the builder's keyword arguments (min_size, "
                                    "max_size, ...); hub weights are refused")
    num_classes: int | None = Field(None, ge=1, description="the model's classes, background included; default: "
                                    "the data's classes + label_offset")
    label_offset: int = Field(1, ge=0, description="the model's label of our class 0 (torchvision: 1, 0 is background)")
    weights: str | None = Field(None, description="a state_dict file for `builder` (or a checkpoint dict holding it "
                                "under 'model'), or a whole pickled model without `builder`")
    train: TorchvisionTrainConfig = TorchvisionTrainConfig()
    signal: Literal["loss", "ap"] = Field("ap", description="loss: -clip(the model's own loss) | ap: detection_scale x "
                                          "the image's own AP@[.5:.95]")

    @model_validator(mode="after")
    def _check(self) -> TorchvisionTaskConfig:
        if self.builder is None and self.weights is None:
            raise ValueError("task.torchvision needs `builder` (a state_dict in `weights`, or trained here) or "
                             "`weights` (a whole pickled model)")
        hub = {k: v for k, v in self.options.items() if k in ("weights", "weights_backbone") and v is not None}
        if hub:
            raise ValueError(f"task.options asks for hub weights {hub}: nothing can be downloaded here; give your "
                             "trained weights as a state_dict file in task.weights")
        return self


class BrightnessTaskConfig(_TaskBase):
    """Known-answer task: hit a target mean luminance (no weights, no data beyond the images)."""

    kind: Literal["brightness_target"]
    brightness_target: float = Field(0.4, gt=0, lt=1, description="target mean luminance")


class PluginTaskConfig(_TaskBase):
    """A task kind registered by user code: `module` names it (imported when the model is built, not while
    the config is validated); `options` are the plugin's own settings, read by its builder."""

    options: dict[str, Any] = Field(default_factory=dict, description="the plugin's own settings")
    weights: str | None = Field(None, description="a weights file the plugin's builder reads, if any")



BUILTIN_TASK_CONFIGS: dict[str, type[_TaskBase]] = {
    "builtin_detector": BuiltinTaskConfig, "builtin_segmenter": BuiltinTaskConfig,
    "ultralytics": UltralyticsTaskConfig, "ultralytics_seg": UltralyticsTaskConfig,
    "torchvision": TorchvisionTaskConfig, "torchvision_seg": TorchvisionTaskConfig,
    "brightness_target": BrightnessTaskConfig,
}


def _task_tag(value: Any) -> str:
    kind = value.get("kind", "builtin_detector") if isinstance(value, dict) else getattr(value, "kind", None)
    return kind if kind in BUILTIN_TASK_CONFIGS else "plugin"


# tagged by kind, so that an error reads `task.ultralytics.train.epochs`
TaskConfig = Annotated[
    Union[  # noqa: UP007 (a union built from the table needs the subscript form)
        tuple(Annotated[cls, Tag(kind)] for kind, cls in {**BUILTIN_TASK_CONFIGS, "plugin": PluginTaskConfig}.items())
    ],
    Discriminator(_task_tag),
]
"""The frozen downstream task model: one typed config per kind, chosen by `kind` (a union discriminated by it;
validating a config never imports user code)."""


def task_fields(task: dict[str, Any], kind: str) -> dict[str, Any]:
    """A task section's fields that another `kind` also has (for switching kinds in a config dict); a field
    whose type differs between the two kinds (`train` of the built-in detector and of a YOLO) is not kept."""
    old = BUILTIN_TASK_CONFIGS.get(task.get("kind", "builtin_detector"), PluginTaskConfig).model_fields
    new = BUILTIN_TASK_CONFIGS.get(kind, PluginTaskConfig).model_fields
    return {k: v for k, v in task.items() if k in new and (k not in old or old[k].annotation == new[k].annotation)}
