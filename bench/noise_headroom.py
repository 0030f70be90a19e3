"""Where a trained policy's pipelines lose to the clean render, by how noisy the raw was, and whether a denoiser
would win it back (val split, evaluation only, nothing trained).

For the images in each quartile of the data's per-image shot noise (the built-in data records it): the frozen
task model's per-image score (`task.signal`) on the learned pipelines' outputs, the clean renders and the camera
ISP's; then the
same with a denoiser applied: the twin's `denoise` (NLM) at fixed strengths inside the learned pipeline, and
after it OpenCV's colour NLM, a bilateral filter, and a chroma-only Gaussian blur (luminance kept).

Usage, after `posisp train` / `posisp seeds` has built that seed's data and task model:

    python3 bench/noise_headroom.py configs/quick-yolo.yaml .posisp/runs/<run>/checkpoints/best \
        bench/results/noise-headroom-yolo-seed1.json seed=1 task.train.seed=1

It is the measurement behind README "Result: an ultralytics YOLO"'s account of the detection goal.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable

import numpy as np
from scipy.ndimage import gaussian_filter

from posisp_dist.baselines.table import render_reference
from posisp_dist.cli import parse_sets
from posisp_dist.config import load_config
from posisp_dist.data.build import build_dataset
from posisp_dist.data.shards import RawDataset
from posisp_dist.isp.modules import LUMA
from posisp_dist.trained.inference import greedy_on_split

NLM_H = (0.01, 0.02, 0.04, 0.08)  # the learned h is about 0.002
QUARTILES = 4


def chroma_blur(x: np.ndarray, sigma: float) -> np.ndarray:
    """Blur each pixel's colour difference from its luminance (Gaussian, `sigma` px), keep the luminance."""
    y = (x * np.asarray(LUMA, np.float32)).sum(-1, keepdims=True)
    return np.clip(y + gaussian_filter(x - y, sigma=(0, sigma, sigma, 0)), 0, 1).astype(np.float32)


def _u8(x: np.ndarray) -> np.ndarray:
    return (np.clip(x, 0, 1) * 255 + 0.5).astype(np.uint8)


def opencv_nlm(x: np.ndarray, h: float, h_colour: float) -> np.ndarray:
    import cv2

    return np.stack([cv2.fastNlMeansDenoisingColored(im, None, h, h_colour, 7, 21) for im in _u8(x)]) / 255.0


def bilateral(x: np.ndarray, sigma_colour: float, sigma_space: float) -> np.ndarray:
    import cv2

    return np.stack([cv2.bilateralFilter(im, 5, sigma_colour, sigma_space) for im in x.astype(np.float32)])


POST: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "then OpenCV NLM h=3, colour 10": lambda x: opencv_nlm(x, 3, 10),
    "then OpenCV NLM h=6, colour 20": lambda x: opencv_nlm(x, 6, 20),
    "then bilateral (colour 0.1, space 3 px)": lambda x: bilateral(x, 0.1, 3),
    "then chroma blur 1 px": lambda x: chroma_blur(x, 1.0),
    "then chroma blur 2 px": lambda x: chroma_blur(x, 2.0),
}


def main(config: str, checkpoint: str, out: str, *sets: str) -> None:
    cfg = load_config(config, parse_sets(list(sets)))
    build_dataset(cfg.data, seed=cfg.seed, progress=False)  # a no-op where that seed's data is already there
    data = RawDataset(cfg.data.root, "val").load()
    if "shot_noise" not in data.extra:
        raise SystemExit(f"{cfg.data.root}: the val split records no per-image 'shot_noise' (built-in data only)")
    res = greedy_on_split(cfg, checkpoint, "val")
    core, tokens, params = res["core"], res["tokens"], res["params"]
    reg, task, targets = core.executor.registry, core.task, core.targets
    noise = np.asarray(data.extra["shot_noise"], np.float64)
    quartiles = np.array_split(np.argsort(noise, kind="stable"), QUARTILES)

    def outputs(p: np.ndarray) -> np.ndarray:
        chunks = [
            core.evaluate(np.arange(i, min(i + 64, len(core))), tokens[i : i + 64], p[i : i + 64], keep_output=True)
            for i in range(0, len(core), 64)
        ]
        return np.concatenate([c.output for c in chunks])

    def row(images: np.ndarray) -> dict[str, object]:
        score = np.asarray(task.score(images, targets), np.float64)
        by_quartile = [float(score[q].mean()) for q in quartiles]
        return {**task.evaluate(images, targets), "score_by_noise_quartile": by_quartile}

    learned = outputs(params)
    rows = {kind: row(render_reference(data, kind)) for kind in ("clean_srgb", "camera_isp")}
    rows["learned"] = row(learned)
    physical = reg.to_physical(params.astype(np.float32))
    if "denoise" in reg.names:
        sl = reg.param_slice(reg.index("denoise"))
        for h in NLM_H:
            p = params.copy()
            p[:, sl] = reg.to_normalised(np.full_like(physical, h))[:, sl]
            rows[f"learned with denoise h={h}"] = row(outputs(p))
    for name, post in POST.items():
        rows[f"learned, {name}"] = row(post(learned).astype(np.float32))
    for name, r in rows.items():
        by_q = " ".join(f"{v:.2f}" for v in r["score_by_noise_quartile"])
        print(f"{name:45s} map {r['map']:.1f}  score by noise quartile {by_q}", flush=True)
    payload = {
        "command": " ".join(["python3 bench/noise_headroom.py", config, checkpoint, out, *sets]),
        "config": config,
        "seed": cfg.seed,
        "split": "val",
        "signal": cfg.task.signal,
        "shot_noise_quartile_means": [float(noise[q].mean()) for q in quartiles],
        "rows": rows,
    }
    with open(out, "w") as f:
        json.dump(payload, f, indent=1)


if __name__ == "__main__":
    main(*sys.argv[1:])
