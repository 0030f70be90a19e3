"""Instance segmentation: instance maps in the built-in scenes and shards (format 2), mask mAP through
pycocotools `segm`, the per-image mask AP signal, and the built-in segmenter trained on the tiny data."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from posisp_dist.data.scenes import make_scene
from posisp_dist.data.shards import SCHEMA, DataError, RawDataset, read_shard_bytes
from posisp_dist.tasks.metrics import coco_mask_map, instance_masks, per_image_mask_ap


def test_scene_instance_maps_lie_inside_their_boxes():
    rng = np.random.default_rng(0)
    seen = empty = 0
    for _ in range(40):
        s = make_scene(rng, 96, ("disc", "square", "triangle", "cross"), (1, 4), (12, 36))
        assert s.instances.shape == (96, 96) and s.instances.max() <= len(s.labels)
        for k, box in enumerate(s.boxes):
            ys, xs = np.nonzero(s.instances == k + 1)
            seen += 1
            if not len(ys):  # wholly covered by a later object (rare): no visible mask
                empty += 1
                continue
            assert xs.min() >= box[0] and xs.max() < box[2] and ys.min() >= box[1] and ys.max() < box[3]
    assert empty <= 0.05 * seen


def test_tiny_shards_carry_instance_maps_and_old_shards_are_refused(tiny_data, tmp_path):
    batch = RawDataset(tiny_data, "val").load()
    assert all(m.shape == batch.raw.shape[1:] for m in batch.instances)
    assert sum(int(m.max()) for m in batch.instances) > 0
    t = batch.targets[0]
    assert t["instances"].max() <= len(t["labels"])
    path = RawDataset(tiny_data, "val").shard_paths[0]
    old = pq.read_table(path).drop_columns(["instances"])  # a shard written before format 2
    sink = pa.BufferOutputStream()
    pq.write_table(old, sink)
    with pytest.raises(DataError, match="before shard format 2 .*posisp data build"):
        read_shard_bytes(sink.getvalue(), "old.parquet")
    assert "instances" in SCHEMA.names


def _mask_scene(rng: np.random.Generator) -> tuple[dict, dict]:
    """One image with 1-3 square objects and noisy predicted masks of them (some false, some missed)."""
    h = w = 48
    inst = np.zeros((h, w), np.uint8)
    n = int(rng.integers(1, 4))
    for k in range(n):
        y, x = (int(v) for v in rng.integers(0, 32, 2))
        inst[y : y + 14, x : x + 14] = k + 1
    n = int(inst.max())
    labels = np.zeros(n, np.int64)
    gt_masks = instance_masks(inst, n)
    nd = int(rng.integers(0, 5))
    pick = rng.integers(0, n, nd)
    masks = gt_masks[pick] ^ (rng.random((nd, h, w)) < 0.04)  # each a noisy copy of one object
    boxes = np.zeros((nd, 4), np.float32)
    target = {"boxes": np.zeros((n, 4), np.float32), "labels": labels, "instances": inst}
    return {"boxes": boxes, "scores": rng.random(nd).astype(np.float32), "labels": np.zeros(nd, np.int64),
            "masks": masks}, target


def test_per_image_mask_ap_is_the_coco_segm_map_of_that_image_alone():
    rng = np.random.default_rng(3)
    scenes = [_mask_scene(rng) for _ in range(25)]
    dets, tgts = [s[0] for s in scenes], [s[1] for s in scenes]
    batched = per_image_mask_ap(dets, tgts) * 100
    for i, (d, t) in enumerate(scenes):
        assert batched[i] == pytest.approx(coco_mask_map([d], [t], 1)["mask_map"], abs=0.05), i
    perfect = [{**d, "masks": instance_masks(t["instances"], len(t["labels"])), "labels": t["labels"],
                "scores": np.ones(len(t["labels"]), np.float32)} for d, t in scenes]
    assert coco_mask_map(perfect, tgts, 1) == {"mask_map": pytest.approx(100.0), "mask_map50": pytest.approx(100.0)}


@pytest.fixture(scope="module")
def segmenter(tiny_cfg, tiny_data):
    from posisp_dist.tasks import load_task_model

    cfg = tiny_cfg.task.model_copy(update={"kind": "builtin_segmenter", "signal": "ap"})
    return load_task_model(cfg, tiny_data, progress=False, device="cpu")


def test_builtin_segmenter_trains_evaluates_and_backpropagates(segmenter, tiny_data):
    batch = RawDataset(tiny_data, "val").load()
    clean = batch.srgb.astype(np.float32) / 255.0
    metric = segmenter.evaluate(clean, batch.targets)
    assert set(metric) == {"mask_map", "mask_map50"} and 0.0 < metric["mask_map"] <= metric["mask_map50"] <= 100.0
    dark = segmenter.evaluate(clean * 0.05, batch.targets)  # the frozen segmenter sees what the ISP made
    assert dark["mask_map"] < metric["mask_map"]
    score = segmenter.score(clean, batch.targets)
    assert score.shape == (len(batch),) and (score >= 0).all() and (score <= 10).all()
    x = torch.as_tensor(clean[:4]).permute(0, 3, 1, 2).contiguous().requires_grad_(True)
    loss, sig = segmenter.loss_and_score(x, batch.targets[:4])
    (grad,) = torch.autograd.grad(loss.sum(), x)
    assert loss.shape == (4,) and torch.isfinite(grad).all() and grad.abs().sum() > 0 and sig.shape == (4,)
    with pytest.raises(ValueError, match="signal 'mixed' for builtin_segmenter"):
        type(segmenter)(segmenter.net, segmenter.classes, signal="mixed")


@pytest.mark.slow
def test_quick_seg_config_trains_through_posisp_train(tiny_cfg, tiny_data, segmenter, ray_local, tmp_path):
    """configs/quick-seg.yaml's task on the tiny data, two iterations through `posisp train --eval val`: the
    pathwise learner backpropagates the segmenter's loss; rows and MLflow keys carry mask mAP."""
    import json

    from conftest import REPO, tiny_train_yaml

    from posisp_dist.cli import main
    from posisp_dist.config import load_config
    from posisp_dist.runs.tracking import Tracker

    seg = load_config(REPO / "configs" / "quick-seg.yaml")
    path, uri = tiny_train_yaml(tiny_cfg, tmp_path, {"kind": seg.task.kind, "signal": seg.task.signal})
    out = tmp_path / "summary.json"
    assert main(["train", "--config", str(path), "--eval", "val", "--quiet", "--json", str(out)]) == 0
    summary = json.loads(out.read_text())
    assert summary["task_backward_images"] > 0 and summary["metrics"][0]["key"] == "mask_map"
    rows = {r["method"]: r for r in summary["eval"]["rows"]}
    assert rows["clean_srgb"]["mask_map"] > rows["input_raw"]["mask_map"]
    assert len(Tracker(uri, "posisp").history("eval/val_mask_map_selection", summary["run_id"])) == 2
