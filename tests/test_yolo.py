"""The ultralytics adapters against the real library: ultralytics' own loss per image, differentiable in the
pixels, frozen weights and BatchNorm statistics, predictions equal to the library's own `predict`, training
with ultralytics' trainer offline, and two iterations of `posisp train` in two EnvRunners."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import config_with_task, run_guarded_pathwise, two_runner_yaml

from posisp_dist.cli import main
from posisp_dist.tasks import load_task_model
from posisp_dist.tasks.yolo import Letterbox, YoloDetector, YoloSegmenter
from posisp_dist.tasks.yolo_lib import ultralytics
from posisp_dist.tasks.yolo_train import label_lines, model_yaml

CLASSES = ["disc", "square", "triangle", "cross"]
TINY = {"model": "yolov8n", "scale": [0.33, 0.0625, 256], "epochs": 2, "imgsz": 64, "batch_size": 16,
        "close_mosaic": 1}


def random_model(segment: bool, tmp: Path, seed: int = 0, family: str = "yolov8n") -> torch.nn.Module:
    """A random-initialised tiny YOLO(-seg) with random BatchNorm statistics (so eval-mode BN is not identity)."""
    ultralytics()
    from ultralytics.nn.tasks import DetectionModel, SegmentationModel

    torch.manual_seed(seed)
    cls = SegmentationModel if segment else DetectionModel
    folder = tmp / f"{family}-{'seg' if segment else 'det'}"  # the file's stem must not name a scale (n, s, ...)
    folder.mkdir(exist_ok=True)
    arch = model_yaml({**TINY, "model": family}, segment, len(CLASSES), folder / "posisp-yolo.yaml")
    model = cls(str(arch), nc=4, verbose=False)
    model.names = dict(enumerate(CLASSES))
    for m in model.modules():
        if isinstance(m, torch.nn.Conv2d):  # variance-keeping init: torch's default fades the input out in depth
            torch.nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    return model


def images_and_targets(data, n: int = 4, seg: bool = False):
    batch = data.load(limit=n)
    return batch.srgb.astype(np.float32) / 255.0, batch.targets


@pytest.fixture(scope="module")
def val(tiny_data):
    from posisp_dist.data.shards import RawDataset

    return RawDataset(tiny_data, "val")


@pytest.fixture(scope="module", params=[False, True], ids=["detect", "segment"])
def adapter(request, tmp_path_factory):
    cls = YoloSegmenter if request.param else YoloDetector
    return cls(random_model(request.param, tmp_path_factory.mktemp("yolo")), CLASSES, imgsz=64, device="cpu",
               conf=0.001, signal="loss")


class FrozenAssigner:
    """Replays the task-aligned assignment of the first pass. ultralytics computes its targets from detached
    predictions, so its loss gradient treats them as constants; finite differences must hold them fixed too."""

    def __init__(self, assigner):
        self.assigner, self.memo, self.calls, self.replay = assigner, [], 0, False

    def __call__(self, *args, **kwargs):
        if not self.replay:
            self.memo.append(self.assigner(*args, **kwargs))
            return self.memo[-1]
        self.calls += 1
        return self.memo[(self.calls - 1) % len(self.memo)]


def test_pixel_gradient_matches_central_finite_differences(adapter, val):
    x, targets = images_and_targets(val, 2)
    adapter.net.double()
    torch.set_default_dtype(torch.float64)  # ultralytics' criterion accumulates its terms in the default dtype
    frozen = adapter.criterion.assigner = FrozenAssigner(adapter.criterion.assigner)
    try:
        images = torch.from_numpy(x).permute(0, 3, 1, 2).double().contiguous().requires_grad_(True)
        loss, _ = adapter.loss_and_score(images, targets)
        (grad,) = torch.autograd.grad(loss.sum(), images)
        assert torch.isfinite(grad).all() and grad.abs().sum() > 0
        frozen.replay = True
        for idx in torch.topk(grad.flatten().abs(), 3).indices.tolist():  # the pixels the loss depends on most
            eps = 1e-2  # ultralytics' mask loss runs partly in float32: a step well above its rounding
            plus, minus = images.detach().clone().flatten(), images.detach().clone().flatten()
            plus[idx] += eps
            minus[idx] -= eps
            with torch.no_grad():
                lp = adapter.loss_and_score(plus.view_as(images), targets)[0].sum()
                lm = adapter.loss_and_score(minus.view_as(images), targets)[0].sum()
            fd = float(lp - lm) / (2 * eps)
            assert fd == pytest.approx(float(grad.flatten()[idx]), rel=0.03, abs=1e-7)
    finally:
        torch.set_default_dtype(torch.float32)
        adapter.net.float()
        adapter.criterion.assigner = frozen.assigner


def test_weights_and_batchnorm_statistics_stay_frozen(adapter, val):
    x, targets = images_and_targets(val, 4)
    before = {k: v.clone() for k, v in adapter.net.state_dict().items()}
    images = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous().requires_grad_(True)
    loss, _ = adapter.loss_and_score(images, targets)
    loss.sum().backward()
    assert images.grad is not None and images.grad.abs().sum() > 0
    assert all(p.grad is None and not p.requires_grad for p in adapter.net.parameters())
    assert not adapter.net.training
    after = adapter.net.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # BatchNorm running stats included


def test_one_images_loss_does_not_depend_on_the_others(adapter, val):
    x, targets = images_and_targets(val, 4)
    images = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()
    with torch.no_grad():
        base = adapter.loss_and_score(images, targets)[0]
        other = images.clone()
        other[2] = torch.rand_like(other[2])
        moved = adapter.loss_and_score(other, targets)[0]
        alone = adapter.loss_and_score(images[1:2], targets[1:2])[0]
    torch.testing.assert_close(moved[[0, 1, 3]], base[[0, 1, 3]], rtol=1e-5, atol=1e-5)
    assert abs(float(moved[2] - base[2])) > 1e-4
    torch.testing.assert_close(alone[0], base[1], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("signal", ["loss", "ap"])
def test_score_equals_the_score_of_loss_and_score(adapter, val, signal):
    x, targets = images_and_targets(val, 6)
    model = type(adapter)(adapter.net, CLASSES, imgsz=64, device="cpu", conf=0.001, signal=signal, batch_size=4)
    images = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()
    loss, score = model.loss_and_score(images, targets)
    np.testing.assert_allclose(model.score(x, targets), score, rtol=1e-5, atol=1e-6)
    if signal == "loss":
        np.testing.assert_allclose(score, -np.clip(loss.detach().numpy(), 0, model.loss_clip), rtol=1e-6)


@pytest.mark.parametrize("family", ["yolov3-tiny", "yolo11n", "yolo26n"])
def test_other_yolo_families_give_a_per_image_loss_with_pixel_gradients(family, val, tmp_path):
    """YOLOv3 (the paper's detector), YOLO11 and the end-to-end YOLO26 through the same contract."""
    model = YoloDetector(random_model(False, tmp_path, family=family), CLASSES, imgsz=64, device="cpu", conf=0.001)
    x, targets = images_and_targets(val, 3)
    images = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous().requires_grad_(True)
    loss, score = model.loss_and_score(images, targets)
    (grad,) = torch.autograd.grad(loss.sum(), images)
    assert loss.shape == (3,) and torch.isfinite(loss).all() and grad.abs().sum() > 0 and score.shape == (3,)
    with torch.no_grad():
        alone = model.loss_and_score(images[2:3].detach(), targets[2:3])[0]
    torch.testing.assert_close(alone[0], loss[2].detach(), rtol=1e-5, atol=1e-5)
    assert len(model.predict(x)) == 3


def test_letterbox_reproduces_ultralytics_geometry_and_pixels():
    ultralytics()
    from ultralytics.data.augment import LetterBox

    rng = np.random.default_rng(0)
    for h, w, imgsz in [(64, 64, 64), (48, 80, 96), (100, 60, 64)]:
        img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        ref = LetterBox(imgsz, auto=True, stride=32)(image=img.copy())
        lb = Letterbox.of(h, w, imgsz, 32)
        assert lb.shape == ref.shape[:2]
        ours = lb.images(torch.from_numpy(img.astype(np.float32) / 255).permute(2, 0, 1)[None])[0]
        diff = np.abs(ours.permute(1, 2, 0).numpy() * 255 - ref.astype(np.float32))
        assert diff.max() <= 1.01  # cv2's fixed-point bilinear rounds to whole levels


def test_labels_map_by_name_then_by_count():
    from posisp_dist.tasks.yolo import class_map

    assert class_map({0: "cross", 1: "disc", 2: "square", 3: "triangle"}, CLASSES).tolist() == [1, 2, 3, 0]
    assert class_map({0: "a", 1: "b", 2: "c", 3: "d"}, CLASSES).tolist() == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="neither by name nor in number"):
        class_map({0: "a"}, CLASSES)


def test_yolo_labels_export_boxes_and_traced_outlines():
    inst = np.zeros((32, 32), np.uint8)
    inst[4:12, 8:20] = 1
    target = {"boxes": np.array([[8, 4, 20, 12], [0, 0, 2, 2]], np.float32), "labels": np.array([2, 1]),
              "instances": inst}
    det = label_lines(target, (32, 32), segments=False)
    assert det[0].split() == ["2", "0.437500", "0.250000", "0.375000", "0.250000"] and len(det) == 2
    seg = label_lines(target, (32, 32), segments=True)  # the second object has no visible pixels
    assert len(seg) == 1 and seg[0].startswith("2 ")
    xy = np.array(seg[0].split()[1:], float).reshape(-1, 2) * 32
    assert xy[:, 0].min() == 8 and xy[:, 0].max() == 19 and xy[:, 1].min() == 4 and xy[:, 1].max() == 11


# --- trained with ultralytics' own trainer, through the task registry -------------------------------------------
def yolo_task(tiny_cfg, kind: str) -> dict:
    return {"kind": kind, "train": TINY, "signal": "ap", "batch_size": 32, "cache_dir": tiny_cfg.task.cache_dir}


@pytest.fixture(scope="module", params=["ultralytics", "ultralytics_seg"])
def trained(request, tiny_cfg, tiny_data):
    cfg = config_with_task(tiny_cfg, yolo_task(tiny_cfg, request.param))
    return cfg, load_task_model(cfg.task, tiny_data, progress=False, device="cpu")


@pytest.mark.slow
def test_trained_yolo_is_cached_and_predicts_as_the_library_does(trained, tiny_data, val):
    from posisp_dist.tasks import task_weights_path

    cfg, model = trained
    path = task_weights_path(cfg.task, tiny_data)
    assert path.is_file() and json.loads(path.with_suffix(".json").read_text())["epochs"] == TINY["epochs"]
    again = load_task_model(cfg.task, tiny_data, progress=False, device="cpu")  # from the cache, not retrained
    assert again.fingerprint() == model.fingerprint()
    # barely trained: its scores are low, so compare at a threshold that keeps detections
    model = type(model)(model.net, model.classes, imgsz=model.imgsz, conf=1e-4, device="cpu")
    x, _ = images_and_targets(val, 8)
    x = np.round(x * 255) / 255  # the library takes uint8: the same pixels both ways
    ours = model.predict(x)
    lib = ultralytics().YOLO(str(path)).predict([np.ascontiguousarray((im * 255).astype(np.uint8)[..., ::-1]) for im
                                                 in x], conf=model.conf, iou=model.iou, imgsz=model.imgsz,
                                                max_det=model.max_det, verbose=False)
    matched = 0
    for mine, theirs in zip(ours, lib, strict=True):
        boxes, scores = theirs.boxes.xyxy.numpy(), theirs.boxes.conf.numpy()
        labels = model.to_model.argsort()[theirs.boxes.cls.numpy().astype(int)]
        top = np.argsort(-mine["scores"])[:10]
        for k in top:  # each of our best detections is one of the library's, up to fused-BN rounding
            close = (labels == mine["labels"][k]) & (np.abs(boxes - mine["boxes"][k]).max(1) < 0.05)
            assert close.any() and np.abs(scores[close] - mine["scores"][k]).min() < 1e-3
            matched += 1
        if "masks" in mine and len(theirs):
            assert mine["masks"].shape[1:] == x.shape[1:3]
    assert matched > 0


@pytest.mark.slow
def test_training_and_inference_open_no_socket_and_leave_home_alone(tiny_cfg, tiny_data, tmp_path):
    """A fresh process (guarded: any socket connection or DNS lookup is recorded and refused), with an empty
    HOME and no ultralytics settings yet: trains a YOLO-seg through the registry and runs its pathwise call."""
    home = tmp_path / "home"
    home.mkdir()
    task = {**yolo_task(tiny_cfg, "ultralytics_seg"), "cache_dir": str(tmp_path / "models"),
            "train": {**TINY, "epochs": 1}}
    env = {k: v for k, v in os.environ.items() if not k.startswith("YOLO_")}
    env.update(HOME=str(home), TMPDIR=str(tmp_path))
    out = run_guarded_pathwise(tmp_path, "UltralyticsTaskConfig", task, tiny_data, 4, env, timeout=600)
    # no ultralytics settings, datasets, weights or runs folder in the user's home (matplotlib, which the project
    # plots with, keeps its own font cache there, as for any matplotlib user)
    written = sorted(str(p.relative_to(home)) for p in home.rglob("*") if p.is_file())
    assert all(p.startswith((".cache/matplotlib", ".config/matplotlib")) for p in written), written
    assert "threads 1" in out  # the caller's thread count survives ultralytics' import and trainer
    assert (tmp_path / f"posisp-ultralytics-{os.getuid()}").is_dir()  # its settings went to the private folder


@pytest.mark.slow
def test_two_iterations_of_posisp_train_in_two_env_runners_then_eval_and_apply(trained, tiny_cfg, tiny_data,
                                                                                ray_local, tmp_path):
    """The real YOLO shipped to two EnvRunner actors through the object store, the pathwise learner through
    ultralytics' loss, then `posisp eval` and `posisp apply` of the run."""
    cfg, _ = trained
    path, uri = two_runner_yaml(tiny_cfg, tmp_path, cfg.task.model_dump(mode="json"))
    out = tmp_path / "summary.json"
    assert main(["train", "--config", str(path), "--eval", "val", "--quiet", "--json", str(out)]) == 0
    summary = json.loads(out.read_text())
    primary = "mask_map" if cfg.task.kind == "ultralytics_seg" else "map"
    assert summary["iterations"] == 2 and summary["task_backward_images"] > 0
    assert summary["metrics"][0]["key"] == primary
    rows = {r["method"]: r for r in summary["eval"]["rows"]}
    assert {"camera_isp", "input_raw", "clean_srgb", "sequence_ppo"} <= set(rows)
    assert main(["eval", "--run", summary["run_id"], "--split", "val", "--tracking-uri", uri, "--quiet",
                 "--json", str(tmp_path / "eval.json")]) == 0
    again = {r["method"]: r for r in json.loads((tmp_path / "eval.json").read_text())["rows"]}
    assert again["sequence_ppo"][primary] == pytest.approx(rows["sequence_ppo"][primary])
    from posisp_dist.data.shards import RawDataset

    b = RawDataset(tiny_data, "test").load(limit=1)
    npz = tmp_path / "shot.npz"
    np.savez(npz, bayer=b.raw[0], black_level=float(b.black_level[0]), white_level=float(b.white_level[0]))
    assert main(["apply", "--run", summary["run_id"], str(npz), "-o", str(tmp_path / "out"), "--tracking-uri",
                 uri]) == 0
    assert (tmp_path / "out" / "shot.png").is_file()


@pytest.mark.slow
def test_training_is_deterministic_and_a_users_checkpoint_loads_unchanged(trained, tiny_data, tmp_path):
    """Retrained from scratch in another cache: the same weights (ultralytics' trainer, seeded and deterministic);
    the trained file given as the user's `weights` is the same model."""
    from posisp_dist.tasks import task_weights_path

    cfg, model = trained
    fresh = cfg.task.model_copy(update={"cache_dir": str(tmp_path / "models")})
    again = load_task_model(fresh, tiny_data, progress=False, device="cpu")
    assert task_weights_path(fresh, tiny_data) != task_weights_path(cfg.task, tiny_data)
    assert again.fingerprint() == model.fingerprint()
    users = cfg.task.model_copy(update={"weights": str(task_weights_path(cfg.task, tiny_data)),
                                        "cache_dir": str(tmp_path / "unused")})
    assert load_task_model(users, tiny_data, progress=False, device="cpu").fingerprint() == model.fingerprint()
    assert not (tmp_path / "unused").exists()  # a user's checkpoint is used as it is: nothing trained or cached


def test_a_checkpoint_of_another_task_is_refused_by_name(trained, tiny_data):
    from posisp_dist.tasks import task_weights_path

    cfg, _ = trained
    other = "ultralytics" if cfg.task.kind == "ultralytics_seg" else "ultralytics_seg"
    wrong = cfg.task.model_copy(update={"kind": other, "weights": str(task_weights_path(cfg.task, tiny_data))})
    with pytest.raises(ValueError, match="holds an ultralytics .* model; task.kind"):
        load_task_model(wrong, tiny_data, progress=False, device="cpu")
