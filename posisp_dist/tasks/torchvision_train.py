"""Training a torchvision detector from scratch on the built-in clean renders: a short, plain loop.

No pretrained weights can be fetched here, so a torchvision task without `weights` trains its `builder` on
the train split's clean sRGB renders: AdamW with a one-cycle schedule, random horizontal flips, the model's
own training-mode losses summed, a fixed seed (shuffling and initialisation; CPU kernels are deterministic).
The state_dict is cached by fingerprint (data, builder, options, training settings, torchvision's version)
like the built-in detector, and is what EnvRunners receive through the object store.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from posisp_dist.data.shards import RawDataset, fingerprint

FORMAT_VERSION = 1


def torchvision_weights_path(cfg: Any, data_root: str | Path) -> Path:
    import torchvision

    dataset = RawDataset(data_root, "train")
    key = fingerprint({"data": dataset.fingerprint, "kind": cfg.kind, "builder": cfg.builder, "options": cfg.options,
                       "num_classes": cfg.num_classes, "label_offset": cfg.label_offset,
                       "train": cfg.train.model_dump(mode="json"), "torchvision": torchvision.__version__,
                       "v": FORMAT_VERSION})
    return Path(cfg.cache_dir) / f"{cfg.kind}-{key}.pt"


def _targets(target: dict[str, np.ndarray], offset: int, masks: bool, flip: bool, w: int) -> dict[str, torch.Tensor]:
    boxes = np.asarray(target["boxes"], np.float32).reshape(-1, 4).copy()
    if flip:
        boxes[:, [0, 2]] = w - boxes[:, [2, 0]]
    labels = np.asarray(target["labels"], np.int64) + offset
    out = {"boxes": torch.from_numpy(boxes), "labels": torch.from_numpy(labels)}
    if masks:
        inst = target["instances"][:, ::-1] if flip else target["instances"]
        out["masks"] = torch.from_numpy(np.stack([inst == k + 1 for k in range(len(boxes))]).astype(np.uint8)
                                        if len(boxes) else np.zeros((0, *inst.shape), np.uint8))
    return out


def train_torchvision(cfg: Any, data_root: str | Path, progress: bool = True) -> Path:
    """The cached state_dict for `cfg` (a torchvision task config with a builder), trained when missing."""
    from tqdm import tqdm

    from posisp_dist.tasks.torchvision_models import build_model

    path = torchvision_weights_path(cfg, data_root)
    if path.exists():
        return path
    tc, seg = cfg.train, cfg.kind == "torchvision_seg"
    dataset = RawDataset(data_root, "train")
    batch = dataset.load()
    if seg and any(t["instances"].size == 0 for t in batch.targets):
        raise ValueError(f"{data_root} holds no instance masks: a Mask R-CNN needs shard format 2")
    images = torch.from_numpy(batch.srgb).permute(0, 3, 1, 2).float().div_(255)
    gen = torch.Generator().manual_seed(tc.seed)
    with torch.random.fork_rng():
        torch.manual_seed(tc.seed)
        model = build_model(cfg.builder, cfg.num_classes or len(dataset.classes) + cfg.label_offset, cfg.options)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
    steps_per_epoch = -(-len(images) // tc.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, tc.lr, total_steps=tc.epochs * steps_per_epoch, pct_start=0.1)
    t0, w = time.time(), images.shape[-1]
    bar = tqdm(total=tc.epochs, desc=f"training {cfg.builder.rpartition(':')[2]} (torchvision)", disable=not progress)
    for _ in range(tc.epochs):
        order = torch.randperm(len(images), generator=gen)
        flips = torch.rand(len(images), generator=gen) < 0.5
        for s in range(0, len(images), tc.batch_size):
            idx = order[s : s + tc.batch_size].tolist()
            xs = [images[i].flip(-1) if flips[i] else images[i] for i in idx]
            ts = [_targets(batch.targets[i], cfg.label_offset, seg, bool(flips[i]), w) for i in idx]
            with torch.random.fork_rng():
                torch.manual_seed(tc.seed + s)
                loss = sum(model(xs, ts).values())
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
            opt.step()
            sched.step()
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.3f}")
    bar.close()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(model.state_dict(), tmp)
    tmp.replace(path)  # atomic: a killed run never leaves a half-written cache file
    info = {"train_seconds": time.time() - t0, "epochs": tc.epochs, "builder": cfg.builder,
            "params": sum(p.numel() for p in model.parameters())}
    path.with_suffix(".json").write_text(json.dumps(info, indent=2))
    return path
