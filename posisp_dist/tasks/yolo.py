"""ultralytics YOLO (detection) and YOLO-seg (instance segmentation) behind the `TaskModel` contract, with a
per-image loss for the pathwise learner built from ultralytics' own loss classes.

- The network is frozen: no parameter takes a gradient, and it stays in eval mode, so BatchNorm uses and
  never updates its running statistics. In eval mode ultralytics' heads return both the decoded predictions
  (for NMS, as `predict` does) and the raw ones (for the loss): one forward pass gives the loss and the score.
- The loss is `model.init_criterion()` (v8DetectionLoss, v8SegmentationLoss, or the end-to-end loss of heads
  that have one), called once per image on that image's slice of the raw predictions, so that one image's
  loss never depends on another's (ultralytics normalises by the targets of the whole batch).
- The library's preprocessing is reproduced in torch: letterbox to `imgsz` (bilinear resize, as cv2's
  INTER_LINEAR, then padding with 114/255, centred, to the stride's multiple), RGB in [0, 1]. Boxes and masks
  come back through ultralytics' own `scale_boxes` / `process_mask` / `scale_masks`.
- Labels: our class k is the model's class of the same name; a model whose names differ but whose class count
  matches is mapped by index; anything else is an error naming both lists.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from posisp_dist.tasks.base import Detections, Targets, state_dict_hash
from posisp_dist.tasks.frozen import FrozenDetector, MaskScoring, freeze, torch_device
from posisp_dist.tasks.yolo_lib import ultralytics

PAD_VALUE = 114 / 255  # ultralytics' letterbox fill


@dataclass(frozen=True)
class Letterbox:
    """ultralytics' `LetterBox(imgsz, auto=True, stride)` geometry for an (h, w) image."""

    h: int
    w: int
    new_h: int
    new_w: int
    top: int
    bottom: int
    left: int
    right: int
    ratio: float

    @classmethod
    def of(cls, h: int, w: int, imgsz: int, stride: int) -> Letterbox:
        r = min(imgsz / h, imgsz / w)
        new_w, new_h = max(round(w * r), 1), max(round(h * r), 1)
        dw, dh = (imgsz - new_w) % stride / 2, (imgsz - new_h) % stride / 2  # auto: the minimum rectangle
        return cls(h, w, new_h, new_w, round(dh - 0.1), round(dh + 0.1), round(dw - 0.1), round(dw + 0.1), r)

    @property
    def shape(self) -> tuple[int, int]:
        return self.new_h + self.top + self.bottom, self.new_w + self.left + self.right

    def images(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, h, w) in [0, 1] -> the letterboxed batch, differentiable."""
        if (self.new_h, self.new_w) != (self.h, self.w):
            x = F.interpolate(x, size=(self.new_h, self.new_w), mode="bilinear", align_corners=False)
        if self.top or self.bottom or self.left or self.right:
            x = F.pad(x, (self.left, self.right, self.top, self.bottom), value=PAD_VALUE)
        return x

    def boxes(self, boxes: np.ndarray) -> np.ndarray:
        """x0 y0 x1 y1 pixel boxes of the image -> the same in the letterboxed image."""
        return boxes * self.ratio + np.array([self.left, self.top, self.left, self.top], np.float32)

    def masks(self, index_map: np.ndarray, ratio: int) -> torch.Tensor:
        """An (h, w) instance index map -> (H / ratio, W / ratio) in the letterboxed frame (nearest), as
        ultralytics' trainer draws its overlapping masks at the mask ratio."""
        m = torch.from_numpy(index_map.astype(np.float64)).to(torch.get_default_dtype())[None, None]
        if (self.new_h, self.new_w) != (self.h, self.w):
            m = F.interpolate(m, size=(self.new_h, self.new_w), mode="nearest")
        m = F.pad(m, (self.left, self.right, self.top, self.bottom), value=0.0)
        hh, ww = self.shape
        return F.interpolate(m, size=(hh // ratio, ww // ratio), mode="nearest")[0]


def _take(preds: Any, i: int) -> Any:
    """Image i's slice of ultralytics' raw predictions (tensors batched on dim 0, in dicts, lists and tuples)."""
    if isinstance(preds, torch.Tensor):
        return preds[i : i + 1]
    if isinstance(preds, dict):
        return {k: _take(v, i) for k, v in preds.items()}
    if isinstance(preds, list | tuple):
        return type(preds)(_take(v, i) for v in preds)
    return preds


def class_map(model_names: dict[int, str], classes: list[str]) -> np.ndarray:
    """Our class index -> the model's class id: by name, else by index when the counts agree."""
    by_name = {name: int(i) for i, name in model_names.items()}
    if all(c in by_name for c in classes):
        return np.array([by_name[c] for c in classes], np.int64)
    if len(model_names) == len(classes):
        return np.arange(len(classes), dtype=np.int64)
    raise ValueError(
        f"the YOLO's classes {list(model_names.values())} match the data's {classes} neither by name nor in "
        "number; train it on these classes (or name its classes as the data does)"
    )


def _hyperparameters(model: torch.nn.Module) -> Any:
    """The loss gains and settings ultralytics' criterion reads from `model.args`, as a namespace (a loaded
    checkpoint carries them as a dict, a freshly built model carries none)."""
    from ultralytics.cfg import DEFAULT_CFG_DICT
    from ultralytics.utils import IterableSimpleNamespace

    args = getattr(model, "args", None) or {}
    args = vars(args) if not isinstance(args, dict) else args
    return IterableSimpleNamespace(**{**DEFAULT_CFG_DICT, **args})


class YoloDetector(FrozenDetector):
    """A frozen ultralytics detection model (YOLOv3/v5/v8/11/26 families); see the module docstring."""

    kind = "ultralytics"

    def __init__(
        self, model: torch.nn.Module, classes: list[str], *, signal: str = "ap", loss_clip: float = 8.0,
        detection_scale: float = 10.0, conf: float = 0.001, iou: float = 0.7, max_det: int = 300,
        imgsz: int | None = None, batch_size: int = 64, device: str | None = None,
    ) -> None:
        self._scoring(signal, loss_clip, detection_scale)
        self.device = torch_device(device)
        self.net = freeze(model.float(), self.device)
        self.net.args = _hyperparameters(self.net)
        self.criterion = self.net.init_criterion()
        self.classes = list(classes)
        self.to_model = class_map(dict(self.net.names), self.classes)
        self.from_model = {int(m): k for k, m in enumerate(self.to_model)}
        self.stride = int(max(self.net.stride))
        self.imgsz = int(imgsz or self.net.args.imgsz)
        self.conf, self.iou, self.max_det, self.batch_size = conf, iou, max_det, batch_size
        self.calls = 0

    @classmethod
    def from_file(cls, path: str | Path, classes: list[str], **kw: Any) -> YoloDetector:
        """A trained ultralytics checkpoint (`best.pt`, `last.pt`), loaded by ultralytics itself."""
        ultralytics()
        from ultralytics.nn.tasks import load_checkpoint

        if not Path(path).is_file():
            raise FileNotFoundError(f"ultralytics weights not found: {path}")
        model, _ = load_checkpoint(str(path), device="cpu", fuse=False)
        task = getattr(model, "task", None) or ("segment" if cls.kind == "ultralytics_seg" else "detect")
        want = "segment" if cls.kind == "ultralytics_seg" else "detect"
        if task != want:
            raise ValueError(f"{path} holds an ultralytics {task!r} model; task.kind {cls.kind!r} needs {want!r}")
        return cls(model, classes, **kw)

    def fingerprint(self) -> str:
        """Weights, every setting that changes `score`, and the library's version (the score cache's key)."""
        from posisp_dist.data.shards import fingerprint

        settings = [self.kind, self.classes, self.signal, self.loss_clip, self.detection_scale, self.conf, self.iou,
                    self.max_det, self.imgsz, ultralytics().__version__]
        return fingerprint({"weights": state_dict_hash(self.net), "settings": settings})

    # --- one forward pass ---------------------------------------------------------------------------------
    def _forward(self, x: torch.Tensor) -> tuple[Letterbox, Any, Any]:
        """(B, 3, h, w) RGB in [0, 1] -> (its letterbox, decoded predictions, raw predictions)."""
        self.calls += 1
        lb = Letterbox.of(x.shape[-2], x.shape[-1], self.imgsz, self.stride)
        decoded, raw = self.net(lb.images(x.to(self.device)))
        return lb, decoded, raw

    def _image_batch(self, target: dict[str, np.ndarray], lb: Letterbox) -> dict[str, torch.Tensor]:
        """One image's labels as ultralytics' trainer hands them to the criterion (normalised xywh)."""
        hh, ww = lb.shape
        keep = np.isin(target["labels"], list(range(len(self.classes))))
        boxes = lb.boxes(np.asarray(target["boxes"], np.float32).reshape(-1, 4)[keep])
        xywh = np.stack([(boxes[:, 0] + boxes[:, 2]) / 2 / ww, (boxes[:, 1] + boxes[:, 3]) / 2 / hh,
                         (boxes[:, 2] - boxes[:, 0]) / ww, (boxes[:, 3] - boxes[:, 1]) / hh], 1)
        cls = self.to_model[np.asarray(target["labels"], np.int64)[keep]]
        return {"batch_idx": torch.zeros(len(cls), device=self.device),
                "cls": torch.as_tensor(cls, dtype=torch.get_default_dtype(), device=self.device).view(-1, 1),
                "bboxes": torch.as_tensor(xywh, dtype=torch.get_default_dtype(), device=self.device).view(-1, 4)}

    def _losses(self, raw: Any, targets: Targets, lb: Letterbox) -> torch.Tensor:
        """(B,) ultralytics' own loss (its gains applied, summed over its terms), one image at a time."""
        losses = []
        for i, target in enumerate(targets):
            loss, _ = self.criterion(_take(raw, i), self._image_batch(target, lb))
            losses.append(loss.sum())
        return torch.stack(losses)

    def _detections(self, decoded: Any, lb: Letterbox) -> Detections:
        """NMS (ultralytics' own) -> per image boxes in the input image's pixels, scores and our labels."""
        from ultralytics.utils import nms, ops

        end2end = bool(getattr(self.net.model[-1], "end2end", False))
        kept = nms.non_max_suppression(decoded, self.conf, self.iou, max_det=self.max_det, end2end=end2end)
        out = []
        for pred in kept:
            pred = pred.detach()
            boxes = ops.scale_boxes(lb.shape, pred[:, :4].clone(), (lb.h, lb.w)).cpu().numpy()
            ours = np.array([self.from_model.get(int(c), -1) for c in pred[:, 5].tolist()], np.int64)
            mine = ours >= 0  # classes of the model that the data does not have are dropped
            out.append({"boxes": boxes[mine].astype(np.float32).reshape(-1, 4),
                        "scores": pred[:, 4].cpu().numpy()[mine].astype(np.float32), "labels": ours[mine]})
        return out

    def _pass(self, x: torch.Tensor, targets: Targets | None, want_dets: bool) -> tuple[Any, Detections | None]:
        """One forward pass: ultralytics' loss per image (given targets) and the NMS'd detections (if wanted)."""
        lb, decoded, raw = self._forward(x)
        loss = self._losses(raw, targets, lb) if targets is not None else None
        return loss, self._detections(_detach(decoded), lb) if want_dets else None


def _detach(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.detach()
    if isinstance(obj, list | tuple):
        return type(obj)(_detach(v) for v in obj)
    return obj


class YoloSegmenter(MaskScoring, YoloDetector):
    """A frozen ultralytics instance-segmentation model (YOLOv8-seg, YOLO11-seg, ...): the detector's contract
    plus masks; its loss adds ultralytics' mask loss (the trainer's overlapping masks at the mask ratio)."""

    kind = "ultralytics_seg"
    mask_ratio = 4

    def _image_batch(self, target: dict[str, np.ndarray], lb: Letterbox) -> dict[str, torch.Tensor]:
        batch = super()._image_batch(target, lb)
        if target["instances"].size == 0:
            raise ValueError("a YOLO-seg task needs instance masks in the annotations (shard format 2)")
        keep = np.flatnonzero(np.isin(target["labels"], list(range(len(self.classes)))))
        index_map = np.zeros_like(target["instances"])
        for new, old in enumerate(keep):  # instance k of the kept labels is value k + 1, as in the trainer
            index_map[target["instances"] == old + 1] = new + 1
        batch["masks"] = lb.masks(index_map, self.mask_ratio).to(self.device)
        return batch

    def _detections(self, decoded: Any, lb: Letterbox) -> Detections:
        """NMS, then ultralytics' `process_mask` at the letterboxed size and `scale_masks` back to the image."""
        from ultralytics.utils import nms, ops

        (pred_all, proto) = decoded
        end2end = bool(getattr(self.net.model[-1], "end2end", False))
        kept = nms.non_max_suppression(pred_all, self.conf, self.iou, max_det=self.max_det, nc=len(self.net.names),
                                       end2end=end2end)
        out = []
        for pred, p in zip(kept, proto, strict=True):
            pred = pred.detach()
            if len(pred):
                masks = ops.process_mask(p, pred[:, 6:], pred[:, :4], lb.shape, upsample=True)
                masks = ops.scale_masks(masks[None].float(), (lb.h, lb.w))[0] > 0.5
            else:
                masks = torch.zeros((0, lb.h, lb.w), dtype=torch.bool)
            boxes = ops.scale_boxes(lb.shape, pred[:, :4].clone(), (lb.h, lb.w)).cpu().numpy()
            ours = np.array([self.from_model.get(int(c), -1) for c in pred[:, 5].tolist()], np.int64)
            mine = ours >= 0
            out.append({"boxes": boxes[mine].astype(np.float32).reshape(-1, 4),
                        "scores": pred[:, 4].cpu().numpy()[mine].astype(np.float32), "labels": ours[mine],
                        "masks": masks.cpu().numpy()[mine]})
        return out
