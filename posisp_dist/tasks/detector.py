"""The built-in frozen detector: trained offline, deterministically, on clean sRGB renders; cached on disk."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from tqdm import tqdm

from posisp_dist.data.shards import RawDataset, fingerprint
from posisp_dist.tasks.base import DETECTION_METRICS, Detections, Targets, state_dict_hash, to_torch_nchw
from posisp_dist.tasks.centernet import CenterNet, decode, encode_targets, per_image_loss
from posisp_dist.tasks.metrics import coco_map, per_image_ap, prediction_score

if TYPE_CHECKING:  # type hints only: the config module validates task kinds through the registry
    from posisp_dist.config import TaskConfig

MODEL_FORMAT_VERSION = 1
SIGNALS = ("loss", "detection", "mixed", "ap")


class BuiltinDetector:
    """Frozen CenterNet behind the `TaskModel` interface; score = -clip(per-image CenterNet loss)."""

    metrics = DETECTION_METRICS

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
        if signal not in SIGNALS:
            raise ValueError(f"unknown task signal {signal!r}; expected one of {SIGNALS}")
        self.signal, self.detection_scale = signal, detection_scale

    def fingerprint(self) -> str:
        """Weights plus every setting that changes `score` (the score cache's task key)."""
        settings = [self.classes, self.signal, self.loss_clip, self.detection_scale, self.score_threshold]
        return fingerprint({"kind": "builtin_detector", "weights": state_dict_hash(self.net), "settings": settings})

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
            tgt = encode_targets(targets[s : s + self.batch_size], len(self.classes), chunk.shape[1:3])
            pred = self._forward(chunk)
            losses.append(per_image_loss(pred, {k: v.to(self.device) for k, v in tgt.items()}).cpu().numpy())
            dets += decode(pred, min_score=self.score_threshold)
        return np.concatenate(losses), dets

    def loss_and_score(self, images: torch.Tensor, targets: Targets) -> tuple[torch.Tensor, np.ndarray]:
        """One forward pass of NCHW torch images -> (B,) unclipped CenterNet loss, differentiable in the
        images (the frozen weights take no gradient; what the pathwise learner backpropagates), and the
        (B,) `score` signal from the same pass."""
        if len(targets) != images.shape[0]:
            raise ValueError(f"{images.shape[0]} images but {len(targets)} targets")
        self.calls += 1
        tgt = encode_targets(targets, len(self.classes), tuple(images.shape[-2:]))
        pred = self.net(images.to(self.device))
        loss = per_image_loss(pred, {k: v.to(self.device) for k, v in tgt.items()})
        dets = decode({k: v.detach() for k, v in pred.items()}, min_score=self.score_threshold)
        return loss, self._signal(loss.detach().cpu().numpy(), dets, targets)

    def losses(self, images: Any, targets: Targets) -> np.ndarray:
        """(B,) unclipped per-image task loss."""
        return self._loss_and_detections(images, targets)[0]

    def score(self, images: Any, targets: Targets) -> np.ndarray:
        """Per-image signal: -clip(loss) (the paper's), detection quality x scale, their sum ('mixed'), or
        the image's own AP@[.5:.95] x scale ('ap'); all from one forward pass."""
        return self._signal(*self._loss_and_detections(images, targets), targets)

    def _signal(self, loss: np.ndarray, dets: Detections, targets: Targets) -> np.ndarray:
        neg_loss = -np.clip(loss, 0.0, self.loss_clip)
        if self.signal == "loss":
            return neg_loss
        if self.signal == "ap":
            return self.detection_scale * per_image_ap(dets, targets).astype(np.float64)
        quality = self.detection_scale * prediction_score(dets, targets).astype(np.float64)
        return quality if self.signal == "detection" else quality + neg_loss

    @torch.inference_mode()
    def predict(self, images: Any) -> Detections:
        dets: Detections = []
        for s in range(0, images.shape[0], self.batch_size):
            dets += decode(self._forward(images[s : s + self.batch_size]), min_score=self.score_threshold)
        return dets

    def evaluate(self, images: Any, targets: Targets) -> dict[str, float]:
        return coco_map(self.predict(images), targets, len(self.classes), tuple(images.shape[1:3]))


def detector_path(cfg: TaskConfig, dataset: RawDataset) -> Path:
    key = fingerprint({"data": dataset.fingerprint, "train": cfg.train.model_dump(), "v": MODEL_FORMAT_VERSION})
    return Path(cfg.cache_dir) / f"detector-{key}.pt"


def train_detector(cfg: TaskConfig, train: RawDataset, progress: bool = True) -> tuple[CenterNet, dict[str, Any]]:
    """Deterministic training on the clean sRGB renders of the train split (random flips only)."""
    tc = cfg.train
    torch.manual_seed(tc.seed)
    gen = np.random.default_rng(tc.seed)
    batch = train.load()
    images = batch.srgb.astype(np.float32) / 255.0
    targets = batch.targets
    net = CenterNet(len(train.classes), tc.width)
    opt = torch.optim.AdamW(net.parameters(), lr=tc.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=tc.lr, total_steps=tc.steps, pct_start=0.1)
    net.train()
    t0, losses = time.time(), []
    for _ in tqdm(range(tc.steps), desc="training built-in detector", disable=not progress):
        idx = gen.integers(0, len(images), tc.batch_size)
        x, tg = images[idx], [targets[i] for i in idx]
        if gen.random() < 0.5:  # horizontal flip of the whole batch
            w = x.shape[2]
            x = x[:, :, ::-1]
            tg = [
                {
                    "boxes": np.stack(
                        [w - t["boxes"][:, 2], t["boxes"][:, 1], w - t["boxes"][:, 0], t["boxes"][:, 3]], 1
                    ),
                    "labels": t["labels"],
                }
                for t in tg
            ]
        loss = per_image_loss(net(to_torch_nchw(x, "cpu")), encode_targets(tg, len(train.classes), x.shape[1:3])).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
    net.eval()
    return net, {"train_seconds": time.time() - t0, "final_loss": float(np.mean(losses[-50:]))}


def load_or_train_detector(
    cfg: TaskConfig, data_root: str | Path, progress: bool = True, device: str | None = None
) -> BuiltinDetector:
    """The cached built-in detector for this dataset and training config; trained when missing."""
    train = RawDataset(data_root, "train")
    path = detector_path(cfg, train)
    if path.exists():
        return detector_from_state(cfg, train.classes, torch.load(path, map_location="cpu", weights_only=True), device)
    net, info = train_detector(cfg, train, progress)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(net.state_dict(), tmp)
    tmp.replace(path)  # atomic: a killed run never leaves a half-written cache file
    path.with_suffix(".json").write_text(json.dumps({**info, "classes": train.classes}, indent=2))
    return detector_from_state(cfg, train.classes, net.state_dict(), device)


def detector_from_state(
    cfg: TaskConfig, classes: list[str], state: dict[str, torch.Tensor], device: str | None = None
) -> BuiltinDetector:
    """The frozen detector from a state dict, wherever it came from (the cache file or the object store)."""
    net = CenterNet(len(classes), cfg.train.width)
    net.load_state_dict(state)
    return BuiltinDetector(
        net, classes, cfg.loss_clip, cfg.batch_size, cfg.score_threshold, device, cfg.signal, cfg.detection_scale
    )
