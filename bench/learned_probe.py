"""How a trained policy's greedy pipelines respond to changing one thing at a time, on the val split (evaluation
only, nothing trained): their mean physical parameters, then the task metric with `denoise`'s h set to fixed
values and with the input shifted in exposure or brightness-equalised before the pipelines run.

Usage, after `posisp train --config CONFIG` (or `posisp seeds`) has built that seed's data and task model:

    python3 bench/learned_probe.py configs/quick-yolo-seg.yaml .posisp/runs/<run>/checkpoints/best \
        bench/results/learned-probe-yolo-seg-seed0.json [key=value ...]

The key=value pairs override the config as `posisp train --set` does (for example `seed=1 task.train.seed=1`,
or `data.root=...` for another copy of the data). It is the measurement behind README "Result: an ultralytics
YOLO"'s note that more denoising or exposure alone does not help a learned pipeline.
"""

from __future__ import annotations

import json
import sys

import numpy as np

from posisp_dist.cli import parse_sets
from posisp_dist.config import load_config
from posisp_dist.data.build import build_dataset
from posisp_dist.trained.inference import greedy_on_split

DENOISE_H = (0.003, 0.01, 0.02, 0.04)
EV_SHIFTS = (-1.0, -0.5, 0.5, 1.0)


def main(config: str, checkpoint: str, out: str, *sets: str) -> None:
    cfg = load_config(config, parse_sets(list(sets)))
    build_dataset(cfg.data, seed=cfg.seed, progress=False)  # a no-op where that seed's data is already there
    res = greedy_on_split(cfg, checkpoint, "val")
    core, tokens, params = res["core"], res["tokens"], res["params"]
    reg = core.executor.registry
    physical = reg.to_physical(params.astype(np.float32))

    def metric(p: np.ndarray = params) -> dict[str, float]:
        chunks = [
            core.evaluate(np.arange(i, min(i + 64, len(core))), tokens[i : i + 64], p[i : i + 64], keep_output=True)
            for i in range(0, len(core), 64)
        ]
        return core.task.evaluate(core.xp.concatenate([c.output for c in chunks]), core.targets)

    rows: dict[str, dict[str, float]] = {"learned": metric()}
    sl = reg.param_slice(reg.index("denoise"))
    for h in DENOISE_H:
        p = params.copy()
        p[:, sl] = reg.to_normalised(np.full_like(physical, h))[:, sl]
        rows[f"denoise h={h}"] = metric(p)
    images = core.images.copy()
    mean = images.reshape(len(images), -1).mean(1)
    for equalise in (False, True):
        for ev in (0.0, *EV_SHIFTS) if equalise else EV_SHIFTS:
            stops = ev + (np.log2(np.median(mean) / mean) if equalise else 0.0)
            core.images = np.clip(
                images * (2.0 ** np.broadcast_to(stops, mean.shape))[:, None, None, None], 0, 1
            ).astype(np.float32)
            rows[f"input {ev:+.1f} EV" + (", brightness equalised" if equalise else "")] = metric()
    core.images = images
    for name, row in rows.items():
        print(f"{name:40s} " + " ".join(f"{k} {v:.1f}" for k, v in row.items()), flush=True)
    spread = physical.std(0)
    mean_params = {
        name: {
            "mean": physical[:, reg.param_slice(i)].mean(0).round(4).tolist(),
            "std_over_images": spread[reg.param_slice(i)].round(5).tolist(),
        }
        for i, name in enumerate(reg.names)
    }
    payload = {
        "command": " ".join(["python3 bench/learned_probe.py", config, checkpoint, out, *sets]),
        "config": config,
        "seed": cfg.seed,
        "split": "val",
        "params": mean_params,
        "rows": rows,
    }
    with open(out, "w") as f:
        json.dump(payload, f, indent=1)


if __name__ == "__main__":
    main(*sys.argv[1:])
