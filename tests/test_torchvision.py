"""The torchvision adapters against the real library: the model's own loss per image, differentiable in the
pixels through its transform, frozen weights and BatchNorm statistics, predictions equal to the model's own
eval-mode outputs, loading by builder + state_dict without downloads, training here, and two iterations of
`posisp train` in two EnvRunners."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import config_with_task, run_guarded_pathwise, two_runner_yaml

from posisp_dist.cli import main
from posisp_dist.tasks import load_task_model
from posisp_dist.tasks.torchvision_arch import fcos_resnet18_fpn, maskrcnn_resnet18_fpn
from posisp_dist.tasks.torchvision_models import TorchvisionDetector, TorchvisionSegmenter, build_model, load_model

CLASSES = ["disc", "square", "triangle", "cross"]
ARCH = "posisp_dist.tasks.torchvision_arch:"
OPTIONS = {"min_size": 64, "max_size": 64}
TINY_TRAIN = {"epochs": 1, "batch_size": 16}


def random_model(segment: bool, seed: int = 0) -> torch.nn.Module:
    """A random-initialised light FCOS / Mask R-CNN with random BatchNorm statistics (eval BN is not identity)."""
    torch.manual_seed(seed)
    make = maskrcnn_resnet18_fpn if segment else fcos_resnet18_fpn
    model = make(num_classes=len(CLASSES) + 1, **OPTIONS)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    return model


@pytest.fixture(scope="module")
def val(tiny_data):
    from posisp_dist.data.shards import RawDataset

    b = RawDataset(tiny_data, "val").load(limit=6)
    return b.srgb.astype(np.float32) / 255.0, b.targets


def nchw(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()


@pytest.fixture(scope="module", params=[False, True], ids=["fcos", "maskrcnn"])
def adapter(request):
    cls = TorchvisionSegmenter if request.param else TorchvisionDetector
    return cls(random_model(request.param), CLASSES, signal="loss", score_threshold=0.0, device="cpu")


@contextlib.contextmanager
def proposals_held_fixed(net: torch.nn.Module) -> Iterator[None]:
    """R-CNN's region proposals replayed from the first call. torchvision's gradient treats them as constants
    (the RPN detaches them), so a finite difference must hold them too, or it measures how they move."""
    rpn = getattr(net, "rpn", None)
    if rpn is None:
        yield
        return
    first: list[torch.Tensor] = []

    def replay(*args, **kwargs):
        boxes, losses = type(rpn).forward(rpn, *args, **kwargs)
        first.extend([] if first else [b.detach().clone() for b in boxes])
        return first, losses

    rpn.forward = replay
    try:
        yield
    finally:
        del rpn.forward


@contextlib.contextmanager
def rpn_labels_in_input_dtype() -> Iterator[None]:
    """torchvision builds the RPN's objectness labels in float32 whatever the model's dtype, which rounds that
    loss term to float32 in a float64 check; the labels follow the logits' dtype here (test only)."""
    bce = F.binary_cross_entropy_with_logits
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(F, "binary_cross_entropy_with_logits", lambda x, y, *a, **kw: bce(x, y.to(x.dtype), *a, **kw))
        yield


@pytest.mark.parametrize("segment", [False, True], ids=["fcos", "maskrcnn"])
def test_pixel_gradient_matches_central_finite_differences(val, segment):
    """At the pixels the loss depends on most, in float64. The 8-bit renders have flat areas where max-pool ties
    put a kink exactly at the rendered values, so the point is jittered below a grey level to make it generic."""
    x, targets = val
    cls = TorchvisionSegmenter if segment else TorchvisionDetector
    adapter = cls(random_model(segment).double(), CLASSES, signal="loss", device="cpu")
    jitter = torch.rand(2, *nchw(x[:1]).shape[1:], generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    images = (nchw(x[:2]).double() + 1e-3 * jitter).requires_grad_(True)
    with proposals_held_fixed(adapter.net), rpn_labels_in_input_dtype():
        loss, _ = adapter.loss_and_score(images, targets[:2])
        (grad,) = torch.autograd.grad(loss.sum(), images)
        assert torch.isfinite(grad).all() and grad.abs().sum() > 0
        for idx in torch.topk(grad.flatten().abs(), 4).indices.tolist():
            eps = 1e-7  # small: the mask head's many ReLUs put a kink within 1e-6 of one of these points
            plus, minus = images.detach().clone().flatten(), images.detach().clone().flatten()
            plus[idx] += eps
            minus[idx] -= eps
            with torch.no_grad():
                lp = adapter.loss_and_score(plus.view_as(images), targets[:2])[0].sum()
                lm = adapter.loss_and_score(minus.view_as(images), targets[:2])[0].sum()
            assert float(lp - lm) / (2 * eps) == pytest.approx(float(grad.flatten()[idx]), rel=1e-4, abs=1e-9)


def test_weights_and_batchnorm_statistics_stay_frozen(adapter, val):
    x, targets = val
    before = {k: v.clone() for k, v in adapter.net.state_dict().items()}
    images = nchw(x[:4]).requires_grad_(True)
    loss, _ = adapter.loss_and_score(images, targets[:4])
    loss.sum().backward()
    assert images.grad is not None and images.grad.abs().sum() > 0
    assert all(p.grad is None and not p.requires_grad for p in adapter.net.parameters())
    assert not any(m.training for m in adapter.net.modules())  # the loss branch is switched off again
    after = adapter.net.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # BatchNorm running stats included


def test_one_images_loss_does_not_depend_on_the_others(adapter, val):
    x, targets = val
    images = nchw(x[:4])
    with torch.no_grad():
        base = adapter.loss_and_score(images, targets[:4])[0]
        other = images.clone()
        other[2] = torch.rand_like(other[2])
        moved = adapter.loss_and_score(other, targets[:4])[0]
        alone = adapter.loss_and_score(images[1:2], targets[1:2])[0]
    torch.testing.assert_close(moved[[0, 1, 3]], base[[0, 1, 3]])
    assert abs(float(moved[2] - base[2])) > 1e-4
    torch.testing.assert_close(alone[0], base[1])


@pytest.mark.parametrize("signal", ["loss", "ap"])
def test_score_equals_the_score_of_loss_and_score(adapter, val, signal):
    x, targets = val
    model = type(adapter)(adapter.net, CLASSES, signal=signal, score_threshold=0.0, batch_size=4, device="cpu")
    loss, score = model.loss_and_score(nchw(x), targets)
    np.testing.assert_allclose(model.score(x, targets), score, rtol=1e-5, atol=1e-6)
    if signal == "loss":
        np.testing.assert_allclose(score, -np.clip(loss.detach().numpy(), 0, model.loss_clip), rtol=1e-6)


def test_predictions_are_the_models_own_eval_outputs_without_the_background_offset(adapter, val):
    x, _ = val
    dets = adapter.predict(x)
    with torch.no_grad():
        own = adapter.net(list(nchw(x)))
    assert sum(len(d["scores"]) for d in dets) > 0
    for mine, theirs in zip(dets, own, strict=True):
        keep = (theirs["labels"] >= 1) & (theirs["labels"] <= len(CLASSES))
        np.testing.assert_array_equal(mine["labels"], theirs["labels"][keep].numpy() - 1)
        np.testing.assert_allclose(mine["boxes"], theirs["boxes"][keep].numpy())
        if "masks" in theirs:
            np.testing.assert_array_equal(mine["masks"], theirs["masks"][keep][:, 0].numpy() > 0.5)
            assert mine["masks"].shape[1:] == x.shape[1:3]


def test_a_state_dict_loads_by_builder_name_and_hub_weights_are_refused(tmp_path, val):
    """torchvision's own builder, called with weights=None and weights_backbone=None: a state_dict round trip
    gives the same model, and its loss has pixel gradients."""
    options = {"min_size": 64, "max_size": 64}
    torch.manual_seed(1)
    model = build_model("retinanet_resnet50_fpn_v2", len(CLASSES) + 1, options)
    torch.save({"model": model.state_dict()}, tmp_path / "ckpt.pth")  # torchvision's reference scripts' layout
    loaded = load_model(tmp_path / "ckpt.pth", "retinanet_resnet50_fpn_v2", len(CLASSES) + 1, options)
    pairs = zip(model.state_dict().values(), loaded.state_dict().values(), strict=True)
    assert all(torch.equal(a, b) for a, b in pairs)
    x, targets = val
    images = nchw(x[:1]).requires_grad_(True)
    loss, _ = TorchvisionDetector(loaded, CLASSES, signal="loss", device="cpu").loss_and_score(images, targets[:1])
    loss.sum().backward()
    assert images.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="hub weights"):
        build_model("retinanet_resnet50_fpn_v2", 5, {"weights_backbone": "DEFAULT"})
    with pytest.raises(ValueError, match="unknown torchvision detection builder 'fcos_tiny'"):
        build_model("fcos_tiny", 5, {})
    with pytest.raises(ValueError, match="num_classes=9"):
        load_model(tmp_path / "ckpt.pth", "retinanet_resnet50_fpn_v2", 9, options)
    with pytest.raises(FileNotFoundError, match="torchvision weights not found"):
        load_model(tmp_path / "none.pt", "retinanet_resnet50_fpn_v2", 5, options)


def test_a_whole_pickled_model_still_loads(tmp_path):
    model = random_model(False)
    torch.save(model, tmp_path / "whole.pt")
    assert isinstance(load_model(tmp_path / "whole.pt", None, 5, {}), type(model))
    torch.save({"not": "a model"}, tmp_path / "state.pt")
    with pytest.raises(ValueError, match="does not hold a torch.nn.Module"):
        load_model(tmp_path / "state.pt", None, 5, {})


def test_config_refuses_hub_weights_and_needs_a_builder_or_weights():
    from pydantic import ValidationError

    from posisp_dist.config import TorchvisionTaskConfig

    with pytest.raises(ValidationError, match="builder"):
        TorchvisionTaskConfig.model_validate({"kind": "torchvision"})
    with pytest.raises(ValidationError, match="hub weights"):
        TorchvisionTaskConfig.model_validate({"kind": "torchvision", "builder": "fcos_resnet50_fpn",
                                              "options": {"weights": "DEFAULT"}})


# --- trained here, through the task registry ----------------------------------------------------------------------
def tv_task(tiny_cfg, kind: str, **kw) -> dict:
    builder = ARCH + ("maskrcnn_resnet18_fpn" if kind == "torchvision_seg" else "fcos_resnet18_fpn")
    return {"kind": kind, "builder": builder, "options": OPTIONS, "train": TINY_TRAIN, "signal": "ap",
            "batch_size": 32, "cache_dir": tiny_cfg.task.cache_dir, **kw}


@pytest.fixture(scope="module", params=["torchvision", "torchvision_seg"])
def trained(request, tiny_cfg, tiny_data):
    cfg = config_with_task(tiny_cfg, tv_task(tiny_cfg, request.param))
    return cfg, load_task_model(cfg.task, tiny_data, progress=False, device="cpu")


@pytest.mark.slow
def test_trained_model_is_cached_deterministic_and_loads_as_a_users_state_dict(trained, tiny_data, tmp_path):
    from posisp_dist.tasks import task_weights_path

    cfg, model = trained
    path = task_weights_path(cfg.task, tiny_data)
    assert path.is_file() and json.loads(path.with_suffix(".json").read_text())["epochs"] == 1
    again = load_task_model(cfg.task, tiny_data, progress=False, device="cpu")  # from the cache
    assert again.fingerprint() == model.fingerprint()
    retrained = load_task_model(cfg.task.model_copy(update={"cache_dir": str(tmp_path)}), tiny_data, progress=False,
                                device="cpu")
    assert retrained.fingerprint() == model.fingerprint()  # seeded: the same weights from scratch
    user = load_task_model(cfg.task.model_copy(update={"weights": str(path)}), tiny_data, progress=False,
                           device="cpu")
    assert user.fingerprint() == model.fingerprint()


@pytest.mark.slow
def test_training_and_inference_open_no_socket(tiny_cfg, tiny_data, tmp_path):
    """A fresh process, guarded (any socket connection or DNS lookup is recorded and refused): trains a light
    Mask R-CNN through the registry and runs its pathwise call."""
    task = {**tv_task(tiny_cfg, "torchvision_seg"), "cache_dir": str(tmp_path / "models")}
    run_guarded_pathwise(tmp_path, "TorchvisionTaskConfig", task, tiny_data, 2, dict(os.environ), timeout=900)

@pytest.mark.slow
def test_two_iterations_of_posisp_train_in_two_env_runners(trained, tiny_cfg, ray_local, tmp_path):
    """The trained model shipped to two EnvRunner actors through the object store, the pathwise learner
    through the model's own loss, then `posisp eval` of the run."""
    cfg, _ = trained
    path, uri = two_runner_yaml(tiny_cfg, tmp_path, cfg.task.model_dump(mode="json"))
    out = tmp_path / "summary.json"
    assert main(["train", "--config", str(path), "--eval", "val", "--quiet", "--json", str(out)]) == 0
    summary = json.loads(out.read_text())
    primary = "mask_map" if cfg.task.kind == "torchvision_seg" else "map"
    assert summary["iterations"] == 2 and summary["task_backward_images"] > 0
    assert summary["metrics"][0]["key"] == primary
    rows = {r["method"]: r for r in summary["eval"]["rows"]}
    assert {"camera_isp", "clean_srgb", "sequence_ppo"} <= set(rows)
    assert main(["eval", "--run", summary["run_id"], "--split", "val", "--tracking-uri", uri, "--quiet"]) == 0
