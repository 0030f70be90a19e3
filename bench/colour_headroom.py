"""Which fixed renderings a frozen task model reads well: the clean renders and the camera ISP in colour and in
greyscale, the camera ISP without its white balance, and with denoising, scored on the val split (evaluation
only, nothing trained).

Usage, after a `posisp train --config CONFIG` has built the data and trained (cached) the task model:

    python3 bench/colour_headroom.py configs/quick-yolo.yaml bench/results/colour-headroom-yolo-seed0.json

It is the measurement behind `configs/quick-yolo*.yaml` opting in to `grey_world` (README "Result: an
ultralytics YOLO").
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable

import numpy as np

from posisp_dist.baselines.table import render_reference
from posisp_dist.config import load_config
from posisp_dist.data.shards import RawDataset
from posisp_dist.isp import modules as m
from posisp_dist.isp.extra.grey_world import SPEC as GREY_WORLD
from posisp_dist.isp.render import camera_isp, smoothstep
from posisp_dist.tasks import load_task_model


def gamma_tone(x: np.ndarray) -> np.ndarray:
    """The camera ISP's last two steps: gamma 1/2.2 and the smoothstep tone curve."""
    return smoothstep(np.clip(x, 1e-8, 1.0) ** (1 / 2.2)).astype(np.float32)


def camera_without_wb(x: np.ndarray, cam2rgb: np.ndarray) -> np.ndarray:
    """The camera ISP with its grey-world gains left out (camera matrix, gamma, tone)."""
    flat = np.clip(x, 0.0, 1.0).reshape(len(x), -1, 3)
    return gamma_tone(np.matmul(flat, cam2rgb.reshape(-1, 3, 3).transpose(0, 2, 1)).reshape(x.shape))


def auto_exposed(x: np.ndarray) -> np.ndarray:
    """Each image scaled so that its mean is 0.18 (linear)."""
    mean = x.reshape(len(x), -1).mean(1)
    return np.clip(x * (0.18 / np.maximum(mean, 1e-6))[:, None, None, None], 0.0, 1.0).astype(np.float32)


def nlm(x: np.ndarray, h: float) -> np.ndarray:
    return m.denoise(x, np.full((len(x), 1), h, np.float32), np)


def renderings(raw: np.ndarray, cam2rgb: np.ndarray) -> dict[str, Callable[[], np.ndarray]]:
    full = np.ones((len(raw), 1), np.float32)
    grey = m.luminance(camera_isp(raw, cam2rgb), np)[..., None].repeat(3, -1)
    return {
        "camera_isp": lambda: camera_isp(raw, cam2rgb),
        "camera_isp without its white balance": lambda: camera_without_wb(raw, cam2rgb),
        "gamma + tone only (no white balance, no camera matrix)": lambda: gamma_tone(raw),
        "grey_world (strength 1) + gamma + tone (no camera matrix)": lambda: gamma_tone(GREY_WORLD(raw, full, np)),
        "camera_isp in greyscale": lambda: grey,
        "camera_isp on auto-exposed input": lambda: camera_isp(auto_exposed(raw), cam2rgb),
        **{
            f"camera_isp on auto-exposed input, NLM h={h} first": (
                lambda h=h: camera_isp(nlm(auto_exposed(raw), h), cam2rgb)
            )
            for h in (0.02, 0.05, 0.1, 0.2)
        },
    }


def main(config: str, out: str) -> None:
    cfg = load_config(config)
    task = load_task_model(cfg.task, cfg.data.root, progress=False)
    data = RawDataset(cfg.data.root, "val").load()
    raw, cam2rgb = render_reference(data, "input_raw"), np.asarray(data.cam2rgb)
    clean = render_reference(data, "clean_srgb")
    rows = {
        "clean_srgb": task.evaluate(clean, data.targets),
        "clean_srgb in greyscale": task.evaluate(m.luminance(clean, np)[..., None].repeat(3, -1), data.targets),
    }
    for name, render in renderings(raw, cam2rgb).items():
        t = time.perf_counter()
        rows[name] = task.evaluate(render(), data.targets)
        print(
            f"{name:60s} " + " ".join(f"{k} {v:.1f}" for k, v in rows[name].items()),
            f"({time.perf_counter() - t:.0f} s)",
            flush=True,
        )
    command = f"python3 bench/colour_headroom.py {config} {out}"
    payload = {"command": command, "config": config, "seed": cfg.seed, "split": "val", "rows": rows}
    with open(out, "w") as f:
        json.dump(payload, f, indent=1)


if __name__ == "__main__":
    main(*sys.argv[1:3])
