"""COCO-style detection and instance-mask metrics through pycocotools, plus per-image quality scores."""

from __future__ import annotations

import contextlib
import io

import numpy as np

from posisp_dist.tasks.base import Detections, Targets


def coco_map(detections: Detections, targets: Targets, n_classes: int, image_hw: tuple[int, int]) -> dict[str, float]:
    """mAP@.5:.95 and mAP@.5 in percent, computed by pycocotools' COCOeval."""

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
    return _cocoeval(images, anns, dets, n_classes, "bbox", ("map", "map50"))


def _cocoeval(
    images: list[dict], anns: list[dict], dets: list[dict], n_classes: int, iou_type: str, keys: tuple[str, str]
) -> dict[str, float]:
    """pycocotools' COCOeval of `dets` against `anns` -> {keys[0]: AP@[.5:.95], keys[1]: AP@.5} in percent."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    if not anns:
        raise ValueError(f"no ground-truth objects: {iou_type} mAP is undefined")
    if not dets:
        return {keys[0]: 0.0, keys[1]: 0.0}
    gt = COCO()
    gt.dataset = {"images": images, "annotations": anns, "categories": [{"id": c} for c in range(n_classes)]}
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress and summary table
        gt.createIndex()
        ev = COCOeval(gt, gt.loadRes(dets), iou_type)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return {keys[0]: float(max(ev.stats[0], 0.0) * 100), keys[1]: float(max(ev.stats[1], 0.0) * 100)}


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of (n, 4) and (m, 4) x0 y0 x1 y1 boxes."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=2)
    area = lambda x: np.prod(np.clip(x[:, 2:] - x[:, :2], 0, None), axis=1)  # noqa: E731
    return inter / np.maximum(area(a)[:, None] + area(b)[None] - inter, 1e-9)


def _padded(arrays: list[np.ndarray], width: int, fill: float, tail: tuple[int, ...] = ()) -> np.ndarray:
    """Ragged per-image arrays -> one (B, width, *tail) array, scattered in one vectorised assignment."""
    counts = np.array([len(a) for a in arrays], np.int64)
    out = np.full((len(arrays), width, *tail), fill, np.float64)
    if counts.sum():
        rows = np.repeat(np.arange(len(arrays)), counts)
        cols = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
        out[rows, cols] = np.concatenate([np.asarray(a, np.float64).reshape(-1, *tail) for a in arrays])
    return out


def ranked_ious(
    detections: Detections, targets: Targets, min_score: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The batch as padded arrays: (B, K) confidences in descending order (padding -1, ranked last), (B, K, G)
    class-aware IoU of each ranked detection with each ground truth (0 for padding), (B,) object counts."""
    if len(detections) != len(targets):
        raise ValueError(f"{len(detections)} detection lists for {len(targets)} targets")
    kept = [d["scores"] >= min_score for d in detections]
    scores = [d["scores"][k] for d, k in zip(detections, kept, strict=True)]
    k_max = max([len(s) for s in scores] + [1])
    g_max = max([len(t["labels"]) for t in targets] + [1])
    sc = _padded(scores, k_max, -1.0)  # padding ranks below every real detection
    order = np.argsort(-sc, axis=1, kind="stable")
    sc = np.take_along_axis(sc, order, 1)
    boxes = np.take_along_axis(
        _padded([d["boxes"][k] for d, k in zip(detections, kept, strict=True)], k_max, 0.0, (4,)), order[..., None], 1
    )
    labels = np.take_along_axis(
        _padded([d["labels"][k] for d, k in zip(detections, kept, strict=True)], k_max, -1.0), order, 1
    )
    gt_boxes = _padded([t["boxes"] for t in targets], g_max, 0.0, (4,))
    gt_labels = _padded([t["labels"] for t in targets], g_max, -2.0)  # never equal to a (padded) label
    lt = np.maximum(boxes[:, :, None, :2], gt_boxes[:, None, :, :2])
    rb = np.minimum(boxes[:, :, None, 2:], gt_boxes[:, None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=3)
    area = lambda x: np.prod(np.clip(x[..., 2:] - x[..., :2], 0, None), axis=-1)  # noqa: E731
    iou = inter / np.maximum(area(boxes)[:, :, None] + area(gt_boxes)[:, None, :] - inter, 1e-9)
    iou *= (labels[:, :, None] == gt_labels[:, None, :]) & (sc[:, :, None] >= 0)
    return sc, iou, np.array([len(t["labels"]) for t in targets])


def prediction_score(detections: Detections, targets: Targets, min_score: float = 0.05) -> np.ndarray:
    """Per-image quality in [0, 1] from predictions alone: greedy class-aware matching (detections in
    descending confidence, each to the free ground truth of highest IoU >= 0.5), sum(conf * IoU) over
    matches divided by max(#objects, #confident detections); 1 - max confidence for an empty image.
    Vectorised over the batch: the Python loop runs over detection ranks, never over images."""
    sc, iou, n_gt = ranked_ious(detections, targets, min_score)
    rows = np.arange(len(targets))
    used = np.zeros(iou.shape[::2], bool)
    total = np.zeros(len(targets))
    for r in range(sc.shape[1]):
        cand = np.where(used, 0.0, iou[:, r])
        best = cand.argmax(axis=1)
        match = cand[rows, best] >= 0.5
        used[rows[match], best[match]] = True
        total += np.where(match, sc[:, r] * cand[rows, best], 0.0)
    confident = (sc >= 0.3).sum(axis=1)
    empty = 1.0 - np.where(sc[:, 0] >= 0, sc[:, 0], 0.0)  # no objects: penalise the most confident detection
    return np.where(n_gt == 0, empty, total / np.maximum(np.maximum(n_gt, confident), 1)).astype(np.float32)


COCO_IOUS = np.linspace(0.5, 0.95, 10)  # COCO's IoU thresholds
COCO_RECALLS = np.linspace(0.0, 1.0, 101)  # COCO's 101-point interpolated precision


def per_image_ap(detections: Detections, targets: Targets, min_score: float = 0.0) -> np.ndarray:
    """(B,) each image's own COCO-style AP@[.5:.95] in [0, 1]: its detections ranked by confidence, greedily
    matched (class-aware, each to the free ground truth of highest IoU) at each of COCO's ten IoU
    thresholds, 101-point interpolated precision over recall, averaged over the thresholds. Unlike
    matched-confidence scores, every false positive ranked above a true positive costs precision, at any
    confidence, as it does in mAP. An image with no objects scores 1 - its highest confidence.
    Vectorised over the batch: Python loops run over thresholds and detection ranks, never over images."""
    return ap_from_ranked(*ranked_ious(detections, targets, min_score))


def ap_from_ranked(sc: np.ndarray, iou: np.ndarray, n_gt: np.ndarray) -> np.ndarray:
    """(B,) per-image AP@[.5:.95] from ranked confidences (B, K), IoUs (B, K, G) and object counts (B,), as
    `ranked_ious` (boxes) or `ranked_mask_ious` (instance masks) give them."""
    valid = sc >= 0  # real detections (padding ranks last)
    k_max, g_max = iou.shape[1], iou.shape[2]
    b, rows = len(n_gt), np.arange(len(n_gt))
    ap = np.zeros(b)
    for thr in COCO_IOUS:
        used = np.zeros((b, g_max), bool)
        tp = np.zeros((b, k_max))
        for r in range(k_max):
            cand = np.where(used, -1.0, iou[:, r])
            best = cand.argmax(axis=1)
            match = cand[rows, best] >= thr
            used[rows[match], best[match]] = True
            tp[:, r] = match
        ctp = np.cumsum(tp, axis=1)
        ranks = np.cumsum(valid, axis=1)
        precision = np.where(valid, ctp / np.maximum(ranks, 1), 0.0)
        recall = ctp / np.maximum(n_gt, 1)[:, None]
        envelope = np.maximum.accumulate(precision[:, ::-1], axis=1)[:, ::-1]  # COCO's monotone precision
        # interpolated precision at each recall point: the envelope at the first rank reaching that recall
        first = (recall[:, None, :] >= COCO_RECALLS[None, :, None]) & valid[:, None, :]
        reached = first.any(axis=2)
        idx = first.argmax(axis=2)
        ap += np.where(reached, np.take_along_axis(envelope, idx, axis=1), 0.0).mean(axis=1)
    ap /= len(COCO_IOUS)
    empty = 1.0 - np.where(valid[:, 0], sc[:, 0], 0.0)
    return np.where(n_gt == 0, empty, ap).astype(np.float32)


def instance_masks(instances: np.ndarray, n: int) -> np.ndarray:
    """(H, W) uint8 instance map -> (n, H, W) bool: object k (0-based) where the map holds k + 1."""
    return instances[None] == np.arange(1, n + 1, dtype=np.uint8)[:, None, None]


def ranked_mask_ious(
    detections: Detections, targets: Targets, min_score: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """As `ranked_ious`, with the IoU of each predicted instance mask (`detections[i]["masks"]`, (n, H, W)
    bool) with each ground-truth object's visible mask (from `targets[i]["instances"]`)."""
    if len(detections) != len(targets):
        raise ValueError(f"{len(detections)} detection lists for {len(targets)} targets")
    kept = [d["scores"] >= min_score for d in detections]
    k_max = max([int(k.sum()) for k in kept] + [1])
    g_max = max([len(t["labels"]) for t in targets] + [1])
    b = len(targets)
    sc = np.full((b, k_max), -1.0)
    iou = np.zeros((b, k_max, g_max))
    for i, (d, t, k) in enumerate(zip(detections, targets, kept, strict=True)):
        order = np.argsort(-d["scores"][k], kind="stable")
        scores, labels = d["scores"][k][order], d["labels"][k][order]
        sc[i, : len(scores)] = scores
        n = len(t["labels"])
        if not len(scores) or not n:
            continue
        pred = d["masks"][k][order].reshape(len(scores), -1).astype(np.float32)
        gt = instance_masks(t["instances"], n).reshape(n, -1).astype(np.float32)
        inter = pred @ gt.T
        union = pred.sum(1)[:, None] + gt.sum(1)[None] - inter
        iou[i, : len(scores), :n] = inter / np.maximum(union, 1e-9) * (labels[:, None] == t["labels"][None])
    return sc, iou, np.array([len(t["labels"]) for t in targets])


def per_image_mask_ap(detections: Detections, targets: Targets, min_score: float = 0.0) -> np.ndarray:
    """(B,) each image's own mask AP@[.5:.95] in [0, 1] (see `per_image_ap`; IoU of instance masks)."""
    return ap_from_ranked(*ranked_mask_ious(detections, targets, min_score))


def coco_mask_map(detections: Detections, targets: Targets, n_classes: int) -> dict[str, float]:
    """Mask mAP@.5:.95 and mAP@.5 in percent, by pycocotools' COCOeval with `iouType="segm"` on RLE masks."""
    from pycocotools import mask as rle

    if len(detections) != len(targets):
        raise ValueError(f"{len(detections)} detection lists for {len(targets)} targets")
    encode = lambda m: rle.encode(np.asfortranarray(m.astype(np.uint8).transpose(1, 2, 0)))  # noqa: E731
    images, anns, dets = [], [], []
    for i, (d, t) in enumerate(zip(detections, targets, strict=True)):
        if t["instances"].size == 0 and len(t["labels"]):
            raise ValueError(f"image {i}: no instance masks in the annotations; mask mAP needs them")
        h, w = t["instances"].shape
        images.append({"id": i, "height": h, "width": w})
        n = len(t["labels"])
        codes = encode(instance_masks(t["instances"], n)) if n else []
        for code, lab in zip(codes, t["labels"], strict=True):
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": int(lab), "segmentation": code,
                         "area": float(rle.area(code)), "bbox": list(rle.toBbox(code)), "iscrowd": 0})
        if len(d["scores"]):
            for code, s, lab in zip(encode(d["masks"]), d["scores"], d["labels"], strict=True):
                dets.append({"image_id": i, "category_id": int(lab), "segmentation": code, "score": float(s)})
    return _cocoeval(images, anns, dets, n_classes, "segm", ("mask_map", "mask_map50"))
