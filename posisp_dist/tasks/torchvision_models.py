"""torchvision detection models (Faster R-CNN, RetinaNet, FCOS, SSD) and Mask R-CNN behind the `TaskModel`
contract, with a per-image loss for the pathwise learner from the model's own loss branch.

- Loading the way torchvision users save: a builder (a name in `torchvision.models.detection`, or
  `package.module:function` for a model assembled in user code), its keyword options, the number of classes
  and a `state_dict` file; or a whole pickled model. Builders are always called with `weights=None` and
  `weights_backbone=None`: no download is ever attempted, and options asking for hub weights are an error.
- The network is frozen and stays in eval mode, so BatchNorm (and FrozenBatchNorm) keeps its statistics. The
  loss comes from the model's own training branch, switched on for the modules that own it only (the model
  itself, its `rpn` and `roi_heads`): the transform (resize + normalisation, in the graph) and every norm
  layer stay in eval. One image per call, since torchvision normalises its losses over the batch; R-CNN's
  random proposal sampling is drawn from a fixed seed, so the loss is a function of the image. As in
  torchvision's training, the gradient treats R-CNN's proposals as constants (the RPN detaches them).
- Detections are the model's own eval-mode outputs; its label 0 is background (`label_offset`).
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from posisp_dist.tasks.base import Detections, Targets, state_dict_hash
from posisp_dist.tasks.frozen import FrozenDetector, MaskScoring, freeze, torch_device

LOSS_OWNERS = ("rpn", "roi_heads")  # submodules that branch on `training` to compute losses
SAMPLING_SEED = 0
HUB_KEYS = ("weights", "weights_backbone")


def detection_builders() -> list[str]:
    import torchvision
    from torchvision.models import detection

    return torchvision.models.list_models(module=detection)


def resolve_builder(name: str) -> Any:
    """A torchvision detection builder by name, or `package.module:function`."""
    if ":" in name:
        module, _, attr = name.partition(":")
        try:
            fn = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as exc:
            raise ValueError(f"task.builder {name!r} cannot be imported: {exc}") from exc
        return fn
    from torchvision.models import get_model_builder

    if name not in detection_builders():
        raise ValueError(f"unknown torchvision detection builder {name!r}; torchvision has {detection_builders()} "
                         "(or give package.module:function)")
    return get_model_builder(name)


def build_model(builder: str, num_classes: int, options: dict[str, Any] | None = None) -> torch.nn.Module:
    """The architecture, randomly initialised, never downloading anything."""
    options = dict(options or {})
    asked = {k: options.pop(k) for k in HUB_KEYS if k in options}
    if any(v is not None for v in asked.values()):
        raise ValueError(f"task.options asks for hub weights {asked}: nothing can be downloaded here; give your "
                         "trained weights as a state_dict file in task.weights")
    return resolve_builder(builder)(weights=None, weights_backbone=None, num_classes=num_classes, **options)


def load_model(path: str | Path, builder: str | None, num_classes: int, options: dict[str, Any]) -> torch.nn.Module:
    """`builder` + a state_dict file (or a checkpoint dict holding it under "model"), or a whole pickled model."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"torchvision weights not found: {path}")
    if builder is None:
        model = torch.load(path, map_location="cpu", weights_only=False)
        if not isinstance(model, torch.nn.Module):
            raise ValueError(f"{path} does not hold a torch.nn.Module (got {type(model).__name__}); for a "
                             "state_dict, name its architecture in task.builder")
        return model
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 (a pickle of objects other than tensors: say what to save)
        raise ValueError(f"{path} is not a plain state_dict ({type(exc).__name__}); save model.state_dict()") from exc
    state = state.get("model", state) if isinstance(state, dict) else state
    if not isinstance(state, dict):
        raise ValueError(f"{path} holds a {type(state).__name__}, not a state_dict")
    model = build_model(builder, num_classes, options)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise ValueError(f"{path} does not fit {builder} with num_classes={num_classes} (background included) "
                         f"and options {options}: {str(exc)[:500]}") from exc
    return model


def set_score_threshold(net: torch.nn.Module, threshold: float) -> None:
    """The model's own detection score threshold (R-CNN: `roi_heads.score_thresh`; one-stage: `score_thresh`)."""
    for owner in (net, getattr(net, "roi_heads", None)):
        if owner is not None and hasattr(owner, "score_thresh"):
            owner.score_thresh = threshold


@contextlib.contextmanager
def loss_branch(net: torch.nn.Module, device: torch.device) -> Iterator[None]:
    """The model's training-mode loss branch with everything else (norm layers, dropout, transform) in eval,
    and a fixed draw for R-CNN's proposal sampling."""
    net.eval()
    owners = [net, *(m for a in LOSS_OWNERS if isinstance(m := getattr(net, a, None), torch.nn.Module))]
    devices = [device] if device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(SAMPLING_SEED)
            for m in owners:
                m.training = True
            yield
    finally:
        net.eval()


class TorchvisionDetector(FrozenDetector):
    """A frozen torchvision detection model; see the module docstring."""

    kind = "torchvision"

    def __init__(
        self, model: torch.nn.Module, classes: list[str], *, label_offset: int = 1, signal: str = "ap",
        loss_clip: float = 8.0, detection_scale: float = 10.0, score_threshold: float | None = None,
        batch_size: int = 64, device: str | None = None,
    ) -> None:
        self._scoring(signal, loss_clip, detection_scale)
        self.device = torch_device(device)
        self.net = freeze(model, self.device)
        if score_threshold is not None:
            set_score_threshold(self.net, score_threshold)
        self.dtype = next(self.net.parameters()).dtype
        self.classes, self.label_offset, self.batch_size = list(classes), label_offset, batch_size
        self.calls = 0

    def fingerprint(self) -> str:
        import torchvision

        from posisp_dist.data.shards import fingerprint

        settings = [self.kind, self.classes, self.label_offset, self.signal, self.loss_clip, self.detection_scale,
                    torchvision.__version__]
        return fingerprint({"weights": state_dict_hash(self.net), "settings": settings})

    def _target(self, target: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
        """Our labels -> the model's (background offset), degenerate boxes dropped (torchvision rejects them)."""
        boxes = np.asarray(target["boxes"], np.float32).reshape(-1, 4)
        labels = np.asarray(target["labels"], np.int64)
        keep = (labels >= 0) & (labels < len(self.classes)) & (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        out = {"boxes": torch.as_tensor(boxes[keep], dtype=self.dtype, device=self.device),
               "labels": torch.as_tensor(labels[keep] + self.label_offset, device=self.device)}
        self._extra_target(out, target, np.flatnonzero(keep))
        return out

    def _extra_target(self, out: dict[str, torch.Tensor], target: dict[str, np.ndarray], keep: np.ndarray) -> None:
        pass

    def _losses(self, x: torch.Tensor, targets: Targets) -> torch.Tensor:
        """(B,) the model's own loss terms summed, one image per call."""
        losses = []
        for image, target in zip(x, targets, strict=True):
            with loss_branch(self.net, self.device):
                self.calls += 1
                parts = self.net([image], [self._target(target)])
            losses.append(torch.stack(list(parts.values())).sum())
        return torch.stack(losses)

    def _detections(self, x: torch.Tensor) -> Detections:
        self.calls += 1
        with torch.no_grad():
            return [self._convert(o) for o in self.net(list(x.detach()))]

    def _convert(self, out: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
        labels = out["labels"].cpu().numpy().astype(np.int64) - self.label_offset
        mine = (labels >= 0) & (labels < len(self.classes))  # background and classes the data lacks are dropped
        return {"boxes": out["boxes"].cpu().numpy().astype(np.float32).reshape(-1, 4)[mine],
                "scores": out["scores"].cpu().numpy().astype(np.float32)[mine], "labels": labels[mine]}

    def _pass(self, x: torch.Tensor, targets: Targets | None, want_dets: bool) -> tuple[Any, Detections | None]:
        x = x.to(self.device, self.dtype)
        loss = self._losses(x, targets) if targets is not None else None
        return loss, self._detections(x) if want_dets else None


class TorchvisionSegmenter(MaskScoring, TorchvisionDetector):
    """A frozen torchvision Mask R-CNN: the detector's contract plus masks (its loss adds the mask loss)."""

    kind = "torchvision_seg"

    def _extra_target(self, out: dict[str, torch.Tensor], target: dict[str, np.ndarray], keep: np.ndarray) -> None:
        instances = np.asarray(target.get("instances", np.zeros(0)))
        if instances.size == 0:
            raise ValueError("a Mask R-CNN task needs instance masks in the annotations (shard format 2)")
        masks = np.stack([instances == k + 1 for k in keep]) if len(keep) else np.zeros((0, *instances.shape), bool)
        out["masks"] = torch.as_tensor(masks.astype(np.uint8), device=self.device)

    def _convert(self, out: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
        labels = out["labels"].cpu().numpy().astype(np.int64) - self.label_offset
        det = super()._convert(out)
        det["masks"] = (out["masks"][:, 0] > 0.5).cpu().numpy()[(labels >= 0) & (labels < len(self.classes))]
        return det


def adapter_class(kind: str) -> type[TorchvisionDetector]:
    return TorchvisionSegmenter if kind == "torchvision_seg" else TorchvisionDetector


def from_config(cfg: Any, classes: list[str], path: str | Path, device: str | None) -> TorchvisionDetector:
    """The adapter for a torchvision task config and a weights file."""
    num_classes = cfg.num_classes or len(classes) + cfg.label_offset
    model = load_model(path, cfg.builder, num_classes, cfg.options)
    return adapter_class(cfg.kind)(
        model, classes, label_offset=cfg.label_offset, signal=cfg.signal, loss_clip=cfg.loss_clip,
        detection_scale=cfg.detection_scale, score_threshold=cfg.score_threshold, batch_size=cfg.batch_size,
        device=device,
    )
