"""COCO-style detection metrics through pycocotools, plus a per-image prediction-quality score."""

from __future__ import annotations

import contextlib
import io

import numpy as np

from posisp_dist.tasks.base import Detections, Targets


def coco_map(detections: Detections, targets: Targets, n_classes: int, image_hw: tuple[int, int]) -> dict[str, float]:
    """mAP@.5:.95 and mAP@.5 in percent, computed by pycocotools' COCOeval."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    if len(detections) != len(targets):
        raise ValueError(f"{len(detections)} detection lists for {len(targets)} targets")
    h, w = image_hw
    images, anns, dets = [], [], []
    for i, (d, t) in enumerate(zip(detections, targets, strict=True)):
        images.append({"id": i, "height": h, "width": w})
        for b, lab in zip(t["boxes"], t["labels"], strict=True):
            x0, y0, x1, y1 = (float(v) for v in b)
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": i,
                    "category_id": int(lab),
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                    "area": (x1 - x0) * (y1 - y0),
                    "iscrowd": 0,
                }
            )
        for b, s, lab in zip(d["boxes"], d["scores"], d["labels"], strict=True):
            x0, y0, x1, y1 = (float(v) for v in b)
            dets.append({"image_id": i, "category_id": int(lab), "bbox": [x0, y0, x1 - x0, y1 - y0], "score": float(s)})
    if not anns:
        raise ValueError("no ground-truth objects: mAP is undefined")
    if not dets:
        return {"map": 0.0, "map50": 0.0}
    gt = COCO()
    gt.dataset = {"images": images, "annotations": anns, "categories": [{"id": c} for c in range(n_classes)]}
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress and summary table
        gt.createIndex()
        ev = COCOeval(gt, gt.loadRes(dets), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return {"map": float(max(ev.stats[0], 0.0) * 100), "map50": float(max(ev.stats[1], 0.0) * 100)}


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of (n, 4) and (m, 4) x0 y0 x1 y1 boxes."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=2)
    area = lambda x: np.prod(np.clip(x[:, 2:] - x[:, :2], 0, None), axis=1)  # noqa: E731
    return inter / np.maximum(area(a)[:, None] + area(b)[None] - inter, 1e-9)


def prediction_score(detections: Detections, targets: Targets, min_score: float = 0.05) -> np.ndarray:
    """Per-image quality in [0, 1] from predictions alone: greedy class-aware matching, sum(conf * IoU)
    over matches divided by max(#objects, #confident detections). Used where a task loss is unavailable."""
    out = np.zeros(len(targets), np.float32)
    for i, (d, t) in enumerate(zip(detections, targets, strict=True)):
        keep = d["scores"] >= min_score
        boxes, scores, labels = d["boxes"][keep], d["scores"][keep], d["labels"][keep]
        n_gt = len(t["labels"])
        if n_gt == 0:
            out[i] = 1.0 - float(scores.max()) if len(scores) else 1.0
            continue
        iou = box_iou(boxes, t["boxes"]) * (labels[:, None] == t["labels"][None, :])
        used, total = np.zeros(n_gt, bool), 0.0
        for j in np.argsort(-scores):
            cand = np.where(used, 0.0, iou[j])
            k = int(cand.argmax()) if n_gt else 0
            if cand[k] >= 0.5:
                used[k] = True
                total += float(scores[j] * cand[k])
        out[i] = total / max(n_gt, int((scores >= 0.3).sum()))
    return out
