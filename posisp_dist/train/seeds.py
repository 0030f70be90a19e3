"""`posisp seeds`: one config trained and evaluated over several seeds, each seed regenerating the data and
retraining the task model, written as one JSON of per-seed rows plus mean ± std: a result is a
distribution, never one seed.

Rows per seed: the baselines (clean sRGB, input RAW, camera ISP, random search), the learned policy
(`sequence_ppo`: the config as given) and, with `--ppo-params`, the same budget with the parameters learned
by PPO (`sequence_ppo_ppo_params`). Each learned row also records its val-mAP history (the metric must
follow the reward: final val mAP against the best seen), its training seconds and compute counters.
"""

from __future__ import annotations

import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from posisp_dist.config import Config, load_config


def seed_config(path: str | Path, seed: int, overrides: dict[str, Any] | None = None) -> Config:
    """The config for one seed: the experiment seed and the task model's training seed both follow it, so
    the data (its fingerprint includes the seed) and the detector are made anew."""
    return load_config(path, {**(overrides or {}), "seed": seed, "task.train.seed": seed})


def _learned_row(cfg: Config, progress: bool) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    from posisp_dist.train.driver import open_tracker, train
    from posisp_dist.train.evaluate import evaluate_run

    t0 = time.perf_counter()
    summary = train(cfg, progress=progress)
    wall = time.perf_counter() - t0
    payload = evaluate_run(summary["run_id"], "test", summary["tracking_uri"], progress=False)
    rows = payload["rows"]
    tracker = open_tracker(cfg, summary["tracking_uri"])
    history = [v for _, v in tracker.history("eval/val_map_selection", summary["run_id"])]
    learned = rows[-1]
    row = {
        "map": learned["map"],
        "map50": learned["map50"],
        "run_id": summary["run_id"],
        "val_map_history": history,
        "final_over_best_val": (history[-1] / max(history)) if history and max(history) > 0 else None,
        "train_seconds": summary["train_seconds"],
        "wall_seconds": round(wall, 1),
        **{k: summary[k] for k in ("iterations", "images", "module_runs", "task_images", "task_backward_images")},
    }
    return row, rows[:-1]


def run_seeds(
    config: str | Path, seeds: list[int], overrides: dict[str, Any] | None = None, ppo_params: bool = False,
    progress: bool = True, out_json: str | Path | None = None,
) -> dict[str, Any]:
    """Train + evaluate `config` for each seed; -> {"command", "seeds": [{"seed", "rows"}], "aggregate"}.
    With `out_json` the file is rewritten after every seed, so a stopped run keeps the seeds it finished."""
    from posisp_dist.train.methods import method_name

    out: dict[str, Any] = {"command": shlex.join(["posisp", *sys.argv[1:]]), "config": str(config), "seeds": []}
    for seed in seeds:
        cfg = seed_config(config, seed, overrides)
        learned, baselines = _learned_row(cfg, progress)
        rows = {b["method"]: {"map": b["map"], "map50": b["map50"]} for b in baselines}
        rows[method_name(cfg)] = learned
        if ppo_params:
            ppo_cfg = seed_config(config, seed, {**(overrides or {}), "policy.param_learning": "ppo"})
            rows[method_name(ppo_cfg)] = _learned_row(ppo_cfg, progress)[0]
        out["seeds"].append({"seed": seed, "rows": rows})
        out["aggregate"] = aggregate(out["seeds"])
        if out_json:
            Path(out_json).parent.mkdir(parents=True, exist_ok=True)
            Path(out_json).write_text(json.dumps(out, indent=2, default=str))
        if progress:
            print(json.dumps({"seed": seed, **{m: round(r["map"], 2) for m, r in rows.items()}}), flush=True)
    return out


def aggregate(seeds: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """mean ± std (population) of map and map50 per row over the seeds that have it."""
    methods = {m for s in seeds for m in s["rows"]}
    agg = {}
    for m in sorted(methods):
        vals = {k: np.array([s["rows"][m][k] for s in seeds if m in s["rows"]]) for k in ("map", "map50")}
        agg[m] = {f"{k}_{stat}": float(getattr(np, stat)(v)) for k, v in vals.items() for stat in ("mean", "std")}
        agg[m]["n_seeds"] = len(vals["map"])
    return agg


def markdown(result: dict[str, Any]) -> str:
    """The aggregate as a table: method | mAP@.5:.95 | mAP@.5 (mean ± std over seeds) | per seed."""
    lines = ["| method | mAP@.5:.95 | mAP@.5 | per seed (mAP@.5:.95) |", "|---|---|---|---|"]
    for m, a in result["aggregate"].items():
        per = ", ".join(f"{s['rows'][m]['map']:.1f}" for s in result["seeds"] if m in s["rows"])
        lines.append(f"| {m} | {a['map_mean']:.1f} ± {a['map_std']:.1f} | {a['map50_mean']:.1f} ± {a['map50_std']:.1f} "
                     f"| {per} |")
    return "\n".join(lines)
