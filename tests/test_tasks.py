"""The frozen task models: built-in detector (determinism, scoring, mAP)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from posisp_dist.baselines.table import render_reference
from posisp_dist.data.shards import RawDataset
from posisp_dist.tasks.base import TaskModel
from posisp_dist.tasks.detector import detector_path, train_detector
from posisp_dist.tasks.metrics import box_iou, coco_map, per_image_ap, prediction_score


def _gt(n=6):
    rng = np.random.default_rng(0)
    targets = []
    for _ in range(n):
        xy = rng.uniform(0, 40, (2, 2))
        boxes = np.concatenate([xy, xy + rng.uniform(8, 20, (2, 2))], 1).astype(np.float32)
        targets.append({"boxes": boxes, "labels": rng.integers(0, 3, 2)})
    return targets


def test_coco_map_perfect_and_wrong_predictions():
    gt = _gt()
    perfect = [{"boxes": t["boxes"], "scores": np.ones(2), "labels": t["labels"]} for t in gt]
    assert coco_map(perfect, gt, 3, (64, 64)) == {"map": pytest.approx(100.0), "map50": pytest.approx(100.0)}
    shifted = [{**d, "boxes": d["boxes"] + 30.0} for d in perfect]
    assert coco_map(shifted, gt, 3, (64, 64))["map"] == pytest.approx(0.0)
    wrong_cls = [{**d, "labels": (d["labels"] + 1) % 3} for d in perfect]
    assert coco_map(wrong_cls, gt, 3, (64, 64))["map50"] == pytest.approx(0.0)


def test_prediction_score_orders_quality():
    gt = _gt(3)
    perfect = [{"boxes": t["boxes"], "scores": np.full(2, 0.9), "labels": t["labels"]} for t in gt]
    half = [{"boxes": t["boxes"][:1], "scores": np.full(1, 0.9), "labels": t["labels"][:1]} for t in gt]
    none = [{"boxes": np.zeros((0, 4)), "scores": np.zeros(0), "labels": np.zeros(0, int)} for _ in gt]
    s = [prediction_score(d, gt).mean() for d in (perfect, half, none)]
    assert s[0] == pytest.approx(0.9) and s[1] == pytest.approx(0.45) and s[2] == 0.0
    np.testing.assert_allclose(box_iou(gt[0]["boxes"], gt[0]["boxes"]).diagonal(), 1.0)


def test_builtin_detector_interface_and_signal(tiny_task, tiny_data):
    assert isinstance(tiny_task, TaskModel)  # names only (a runtime-checkable Protocol): the calls below check them
    assert isinstance(tiny_task.fingerprint(), str) and tiny_task.metrics[0].key == "map"
    val = RawDataset(tiny_data, "val").load()
    clean = render_reference(val, "clean_srgb")
    dark = render_reference(val, "input_raw")
    s_clean, s_dark = tiny_task.score(clean, val.targets), tiny_task.score(dark, val.targets)
    assert tiny_task.signal == "ap"  # quick.yaml's: 10 x the image's own AP, in [0, 10]
    assert s_clean.shape == (len(val),) and np.all((s_clean >= 0) & (s_clean <= tiny_task.detection_scale))
    assert s_clean.mean() > s_dark.mean()  # the detector was trained on clean sRGB renders
    m = tiny_task.evaluate(clean, val.targets)
    assert 0.0 <= m["map50"] <= 100.0 and m["map"] <= m["map50"]
    with pytest.raises(ValueError, match="images but"):
        tiny_task.score(clean[:3], val.targets)


def test_detector_training_is_deterministic_and_cached(tiny_cfg, tiny_data, tiny_task):
    cfg = tiny_cfg.task.model_copy(update={"train": tiny_cfg.task.train.model_copy(update={"steps": 3})})
    ds = RawDataset(tiny_data, "train")
    a, _ = train_detector(cfg, ds, progress=False)
    b, _ = train_detector(cfg, ds, progress=False)
    for pa, pb in zip(a.state_dict().values(), b.state_dict().values(), strict=True):
        torch.testing.assert_close(pa, pb, rtol=0, atol=0)
    assert detector_path(tiny_cfg.task, ds).exists()  # the session fixture trained and cached it
    assert detector_path(cfg, ds) != detector_path(tiny_cfg.task, ds)  # a new training config is a new model


def test_detector_signal_modes_share_one_forward_pass(tiny_task, tiny_data):
    from posisp_dist.tasks.detector import BuiltinDetector

    val = RawDataset(tiny_data, "val").load()
    clean = render_reference(val, "clean_srgb")

    def make(signal):
        return BuiltinDetector(
            tiny_task.net,
            tiny_task.classes,
            tiny_task.loss_clip,
            8,
            tiny_task.score_threshold,
            "cpu",
            signal,
            detection_scale=10.0,
        )

    loss_only, det, mixed, ap = make("loss"), make("detection"), make("mixed"), make("ap")
    quality = 10.0 * prediction_score(det.predict(clean), val.targets)
    np.testing.assert_allclose(ap.score(clean, val.targets), 10.0 * per_image_ap(ap.predict(clean), val.targets))
    np.testing.assert_allclose(det.score(clean, val.targets), quality, rtol=1e-6)
    np.testing.assert_allclose(
        mixed.score(clean, val.targets), quality + loss_only.score(clean, val.targets), rtol=1e-5, atol=1e-6
    )
    before = mixed.calls
    mixed.score(clean, val.targets)
    assert mixed.calls - before == -(-len(val) // 8)  # one forward per batch of 8, not two
    with pytest.raises(ValueError, match="unknown task signal"):
        make("vibes")


def _prediction_score_loop(detections, targets, min_score=0.05):
    """Oracle: the per-image greedy matching, written as the definition reads."""
    out = []
    for d, t in zip(detections, targets, strict=True):
        keep = d["scores"] >= min_score
        boxes, scores, labels = d["boxes"][keep], d["scores"][keep], d["labels"][keep]
        if len(t["labels"]) == 0:
            out.append(1.0 - float(scores.max()) if len(scores) else 1.0)
            continue
        iou = box_iou(boxes, t["boxes"]) * (labels[:, None] == t["labels"][None, :])
        used, total = np.zeros(len(t["labels"]), bool), 0.0
        for j in np.argsort(-scores, kind="stable"):
            cand = np.where(used, 0.0, iou[j])
            k = int(cand.argmax())
            if cand[k] >= 0.5:
                used[k] = True
                total += float(scores[j] * cand[k])
        out.append(total / max(len(t["labels"]), int((scores >= 0.3).sum())))
    return np.array(out, np.float32)


def test_vectorised_prediction_score_equals_the_per_image_definition():
    rng = np.random.default_rng(0)
    targets, dets = [], []
    for i in range(40):
        n = int(rng.integers(0, 4))
        xy = rng.uniform(0, 40, (n, 2))
        gt = np.concatenate([xy, xy + rng.uniform(5, 20, (n, 2))], 1).astype(np.float32)
        targets.append({"boxes": gt, "labels": rng.integers(0, 3, n)})
        m = int(rng.integers(0, 7))
        src = gt[rng.integers(0, n, m)] if n else rng.uniform(0, 40, (m, 4)).astype(np.float32)
        boxes = (src + rng.normal(0, 2 if i % 2 else 6, (m, 4))).astype(np.float32)  # near or far from the truth
        dets.append(
            {"boxes": boxes, "scores": rng.uniform(0, 1, m).astype(np.float32), "labels": rng.integers(0, 3, m)}
        )
    got = prediction_score(dets, targets)
    np.testing.assert_allclose(got, _prediction_score_loop(dets, targets), atol=1e-6)
    assert 0.0 < got.mean() < 1.0 and len(set(np.round(got, 3))) > 5  # a spread of qualities, not a constant


def _random_scene(rng, n_classes=2):
    n_gt = int(rng.integers(1, 4))
    xy, wh = rng.uniform(0, 80, (n_gt, 2)), rng.uniform(10, 40, (n_gt, 2))
    gt = np.concatenate([xy, xy + wh], 1).astype(np.float32)
    labels = rng.integers(0, n_classes, n_gt)
    nd = int(rng.integers(0, 7))
    pick = rng.integers(0, n_gt, nd)
    boxes = (gt[pick] + rng.normal(0, 4, (nd, 4))).astype(np.float32).reshape(-1, 4)
    det_labels = np.where(rng.random(nd) < 0.8, labels[pick], rng.integers(0, n_classes, nd))
    return {"boxes": boxes, "scores": rng.random(nd).astype(np.float32), "labels": det_labels}, {
        "boxes": gt,
        "labels": labels,
    }


def test_per_image_ap_is_the_coco_map_of_that_image_alone():
    """On a one-image, one-class data set, pycocotools' mAP@.5:.95 is the image's own AP: per_image_ap must
    equal it, batch rows independent of each other."""
    from posisp_dist.tasks.metrics import per_image_ap

    rng = np.random.default_rng(0)
    scenes = [_random_scene(rng, n_classes=1) for _ in range(40)]
    dets, tgts = [s[0] for s in scenes], [s[1] for s in scenes]
    batched = per_image_ap(dets, tgts) * 100
    for i, (d, t) in enumerate(scenes):
        assert batched[i] == pytest.approx(coco_map([d], [t], 1, (128, 128))["map"], abs=0.05), i


def test_per_image_ap_pays_for_false_positives_that_matched_confidence_ignores():
    """A confident-enough false positive ranked above the true positive lowers mAP and the image's AP, while
    the matched-confidence signal (`prediction_score`) does not move: the gap the `ap` signal closes."""
    from posisp_dist.tasks.metrics import per_image_ap

    gt = {"boxes": np.array([[10, 10, 40, 40]], np.float32), "labels": np.array([0])}
    tp = {"boxes": np.array([[10, 10, 40, 40]], np.float32), "scores": np.array([0.25], np.float32), "labels": [0]}
    fp_box = np.array([[70, 70, 100, 100]], np.float32)
    with_fp = {
        "boxes": np.concatenate([tp["boxes"], fp_box]),
        "scores": np.array([0.25, 0.28], np.float32),
        "labels": np.array([0, 0]),
    }
    tp["labels"] = np.array([0])
    assert prediction_score([with_fp], [gt])[0] == pytest.approx(prediction_score([tp], [gt])[0])
    assert per_image_ap([with_fp], [gt])[0] < per_image_ap([tp], [gt])[0]
    assert coco_map([with_fp], [gt], 1, (128, 128))["map"] < coco_map([tp], [gt], 1, (128, 128))["map"]
