"""The built-in frozen detector: trained offline, deterministically, on clean sRGB renders; cached on disk."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from posisp_dist.data.shards import RawDataset, fingerprint
from posisp_dist.task_config import TaskConfig
from posisp_dist.tasks.base import DETECTION_METRICS, Detections, Targets, state_dict_hash, to_torch_nchw
from posisp_dist.tasks.centernet import CenterNet, decode, encode_targets, per_image_loss
from posisp_dist.tasks.metrics import coco_map, per_image_ap
from posisp_dist.tasks.signals import task_signal

MODEL_FORMAT_VERSION = 1
SIGNALS = ("loss", "detection", "mixed", "ap")


class BuiltinDetector:
    """Frozen CenterNet behind the `TaskModel` interface; score = -clip(per-image CenterNet loss).

    A subclass with another head (`posisp_dist.tasks.segmenter`) overrides `net_class`, `kind`, `metrics`,
    `head_loss`, `decode_batch`, `image_ap` and `evaluate`; loading, caching, training and the signals stay."""

    metrics = DETECTION_METRICS
    net_class = CenterNet
    kind = "builtin_detector"
    cache_prefix = "detector"
    signals = SIGNALS

    @staticmethod
    def head_loss(pred: dict[str, torch.Tensor], targets: Targets, hw: tuple[int, int]) -> torch.Tensor:
        """(B,) per-image training/task loss of the network's outputs (on the network's device)."""
        device = pred["heatmap"].device
        tgt = encode_targets(targets, pred["heatmap"].shape[1], hw)
        return per_image_loss(pred, {k: v.to(device) for k, v in tgt.items()})

    def decode_batch(self, pred: dict[str, torch.Tensor], hw: tuple[int, int]) -> Detections:
        return decode(pred, min_score=self.score_threshold)

    @staticmethod
    def image_ap(dets: Detections, targets: Targets) -> np.ndarray:
        return per_image_ap(dets, targets)

    def __init__(
        self,
        net: CenterNet,
        classes: list[str],
        loss_clip: float = 4.0,
        batch_size: int = 64,
        score_threshold: float = 0.01,
        device: str | None = None,
        signal: str = "loss",
        detection_scale: float = 10.0,
    ) -> None:
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.net = net.to(self.device).eval()
        for p in self.net.parameters():
            p.requires_grad_(False)
        self.classes = list(classes)
        self.loss_clip = loss_clip
        self.batch_size = batch_size
        self.score_threshold = score_threshold
        self.calls = 0  # forward passes (batches) run, for compute accounting
        if signal not in self.signals:
            raise ValueError(f"unknown task signal {signal!r} for {self.kind}; expected one of {self.signals}")
        self.signal, self.detection_scale = signal, detection_scale

    def fingerprint(self) -> str:
        """Weights plus every setting that changes `score` (the score cache's task key)."""
        settings = [self.classes, self.signal, self.loss_clip, self.detection_scale, self.score_threshold]
        return fingerprint({"kind": self.kind, "weights": state_dict_hash(self.net), "settings": settings})

    @property
    def n_params(self) -> int:
        return sum(p.numel() for p in self.net.parameters())

    def _forward(self, images: Any) -> dict[str, torch.Tensor]:
        self.calls += 1
        return self.net(to_torch_nchw(images, self.device))

    @torch.inference_mode()
    def _loss_and_detections(self, images: Any, targets: Targets) -> tuple[np.ndarray, Detections]:
        """One forward pass per chunk -> (B,) unclipped task loss and the decoded detections."""
        if len(targets) != images.shape[0]:
            raise ValueError(f"{images.shape[0]} images but {len(targets)} targets")
        losses, dets = [], []
        for s in range(0, images.shape[0], self.batch_size):
            chunk = images[s : s + self.batch_size]
            pred = self._forward(chunk)
            hw = tuple(chunk.shape[1:3])
            losses.append(self.head_loss(pred, targets[s : s + self.batch_size], hw).cpu().numpy())
            dets += self.decode_batch(pred, hw)
        return np.concatenate(losses), dets

    def loss_and_score(self, images: torch.Tensor, targets: Targets) -> tuple[torch.Tensor, np.ndarray]:
        """One forward pass of NCHW torch images -> (B,) unclipped CenterNet loss, differentiable in the
        images (the frozen weights take no gradient; what the pathwise learner backpropagates), and the
        (B,) `score` signal from the same pass."""
        if len(targets) != images.shape[0]:
            raise ValueError(f"{images.shape[0]} images but {len(targets)} targets")
        self.calls += 1
        hw = tuple(images.shape[-2:])
        pred = self.net(images.to(self.device))
        loss = self.head_loss(pred, targets, hw)
        dets = self.decode_batch({k: v.detach() for k, v in pred.items()}, hw)
        return loss, self._signal(loss.detach().cpu().numpy(), dets, targets)

    def losses(self, images: Any, targets: Targets) -> np.ndarray:
        """(B,) unclipped per-image task loss."""
        return self._loss_and_detections(images, targets)[0]

    def score(self, images: Any, targets: Targets) -> np.ndarray:
        """Per-image signal: -clip(loss) (the paper's), detection quality x scale, their sum ('mixed'), or
        the image's own AP@[.5:.95] x scale ('ap'); all from one forward pass."""
        return self._signal(*self._loss_and_detections(images, targets), targets)

    def _signal(self, loss: np.ndarray, dets: Detections, targets: Targets) -> np.ndarray:
        return task_signal(self.signal, loss, dets, targets, self.loss_clip, self.detection_scale, self.image_ap)

    @torch.inference_mode()
    def predict(self, images: Any) -> Detections:
        dets: Detections = []
        for s in range(0, images.shape[0], self.batch_size):
            dets += self.decode_batch(self._forward(images[s : s + self.batch_size]), tuple(images.shape[1:3]))
        return dets

    def evaluate(self, images: Any, targets: Targets) -> dict[str, float]:
        return coco_map(self.predict(images), targets, len(self.classes), tuple(images.shape[1:3]))


def detector_path(cfg: TaskConfig, dataset: RawDataset, cls: type[BuiltinDetector] | None = None) -> Path:
    cls = cls or BuiltinDetector
    key = fingerprint({"data": dataset.fingerprint, "train": cfg.train.model_dump(), "v": MODEL_FORMAT_VERSION})
    return Path(cfg.cache_dir) / f"{cls.cache_prefix}-{key}.pt"


def _flip(x: np.ndarray, targets: Targets) -> tuple[np.ndarray, Targets]:
    """Horizontal flip of a batch of images with their boxes and instance maps."""
    w = x.shape[2]
    flipped = [
        {
            "boxes": np.stack([w - t["boxes"][:, 2], t["boxes"][:, 1], w - t["boxes"][:, 0], t["boxes"][:, 3]], 1),
            "labels": t["labels"],
            "instances": t["instances"][:, ::-1] if t["instances"].size else t["instances"],
        }
        for t in targets
    ]
    return x[:, :, ::-1], flipped


def train_detector(
    cfg: TaskConfig, train: RawDataset, progress: bool = True, cls: type[BuiltinDetector] | None = None
) -> tuple[CenterNet, dict[str, Any]]:
    """Deterministic training of `cls`'s network (the detector's by default) on the clean sRGB renders of
    the train split (random flips only), minimising its `head_loss`."""
    cls = cls or BuiltinDetector
    tc = cfg.train
    torch.manual_seed(tc.seed)
    gen = np.random.default_rng(tc.seed)
    batch = train.load()
    images = batch.srgb.astype(np.float32) / 255.0
    targets = batch.targets
    net = cls.net_class(len(train.classes), tc.width)
    opt = torch.optim.AdamW(net.parameters(), lr=tc.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=tc.lr, total_steps=tc.steps, pct_start=0.1)
    net.train()
    t0, losses = time.time(), []
    for _ in tqdm(range(tc.steps), desc=f"training {cls.kind.replace('_', ' ')}", disable=not progress):
        idx = gen.integers(0, len(images), tc.batch_size)
        x, tg = images[idx], [targets[i] for i in idx]
        if gen.random() < 0.5:  # horizontal flip of the whole batch
            x, tg = _flip(x, tg)
        loss = cls.head_loss(net(to_torch_nchw(x, "cpu")), tg, x.shape[1:3]).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
    net.eval()
    return net, {"train_seconds": time.time() - t0, "final_loss": float(np.mean(losses[-50:]))}


def load_or_train_detector(
    cfg: TaskConfig, data_root: str | Path, progress: bool = True, device: str | None = None,
    cls: type[BuiltinDetector] | None = None,
) -> BuiltinDetector:
    """The cached built-in `cls` (the detector by default) for this dataset and training config; trained when
    missing."""
    cls = cls or BuiltinDetector
    train = RawDataset(data_root, "train")
    path = detector_path(cfg, train, cls)
    if path.exists():
        state = torch.load(path, map_location="cpu", weights_only=True)
        return detector_from_state(cfg, train.classes, state, device, cls)
    net, info = train_detector(cfg, train, progress, cls)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(net.state_dict(), tmp)
    tmp.replace(path)  # atomic: a killed run never leaves a half-written cache file
    path.with_suffix(".json").write_text(json.dumps({**info, "classes": train.classes}, indent=2))
    return detector_from_state(cfg, train.classes, net.state_dict(), device, cls)


def detector_from_state(
    cfg: TaskConfig, classes: list[str], state: dict[str, torch.Tensor], device: str | None = None,
    cls: type[BuiltinDetector] | None = None,
) -> BuiltinDetector:
    """The frozen model from a state dict, wherever it came from (the cache file or the object store)."""
    cls = cls or BuiltinDetector
    net = cls.net_class(len(classes), cfg.train.width)
    net.load_state_dict(state)
    return cls(net, classes, cfg.loss_clip, cfg.batch_size, cfg.score_threshold, device, cfg.signal,
               cfg.detection_scale)
