"""`posisp seeds`: one config trained and evaluated over several seeds, each seed regenerating the data and
retraining the task model, written as one JSON of per-seed rows plus mean ± std: a result is a
distribution, never one seed.

Rows per seed: the baselines (clean sRGB, input RAW, camera ISP, random search), the learned policy
(`sequence_ppo`: the config as given) and, with `--ppo-params`, the same budget with the parameters learned
by PPO (`sequence_ppo_ppo_params`), each with the metrics the task declares (a detector: map, map50). Each
learned row also records its val history of the primary metric (the metric must follow the reward: the
final val value against the best seen), its training seconds and compute counters.
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
    """The config for one seed: the experiment seed and the task model's training seed (for kinds trained here)
    both follow it, so the data (its fingerprint includes the seed) and the task model are made anew."""
    base = {**(overrides or {}), "seed": seed}
    cfg = load_config(path, base)
    if "train" not in type(cfg.task).model_fields:  # a task model from the user's weights: nothing to retrain
        return cfg
    return load_config(path, {**base, "task.train.seed": seed})


def _learned_row(cfg: Config, progress: bool) -> tuple[dict[str, Any], list[dict[str, Any]], list[dict[str, Any]]]:
    """-> (the learned row, the baseline rows, the task's metrics)."""
    from posisp_dist.train.driver import train
    from posisp_dist.trained.evaluate import evaluate_run
    from posisp_dist.runs.storage import open_tracker, selection_key

    t0 = time.perf_counter()
    summary = train(cfg, progress=progress)
    wall = time.perf_counter() - t0
    payload = evaluate_run(summary["run_id"], "test", summary["tracking_uri"], progress=False)
    rows = payload["rows"]
    tracker = open_tracker(cfg, summary["tracking_uri"])
    history = [v for _, v in tracker.history(selection_key(cfg), summary["run_id"])]
    metrics = payload["metrics"]
    learned = rows[-1]
    best = (max if metrics[0]["higher_is_better"] else min)(history) if history else None
    row = {
        **{m["key"]: learned[m["key"]] for m in metrics},
        "run_id": summary["run_id"],
        "val_history": history,  # the primary metric, greedy on val, at each selection point
        "final_over_best_val": (history[-1] / best) if best else None,
        "train_seconds": summary["train_seconds"],
        "wall_seconds": round(wall, 1),
        **{k: summary[k] for k in ("iterations", "images", "module_runs", "task_images", "task_backward_images")},
    }
    return row, rows[:-1], metrics


def run_seeds(
    config: str | Path, seeds: list[int], overrides: dict[str, Any] | None = None, ppo_params: bool = False,
    progress: bool = True, out_json: str | Path | None = None,
) -> dict[str, Any]:
    """Train + evaluate `config` for each seed; -> {"command", "seeds": [{"seed", "rows"}], "aggregate"}.
    With `out_json` the file is rewritten after every seed, so a stopped run keeps the seeds it finished."""
    from posisp_dist.methods import method_name

    out: dict[str, Any] = {"command": shlex.join(["posisp", *sys.argv[1:]]), "config": str(config), "seeds": []}
    for seed in seeds:
        cfg = seed_config(config, seed, overrides)
        learned, baselines, metrics = _learned_row(cfg, progress)
        out["metrics"] = metrics
        rows = {b["method"]: {m["key"]: b[m["key"]] for m in metrics} for b in baselines}
        rows[method_name(cfg)] = learned
        if ppo_params:
            ppo_cfg = seed_config(config, seed, {**(overrides or {}), "policy.param_learning": "ppo"})
            rows[method_name(ppo_cfg)] = _learned_row(ppo_cfg, progress)[0]
        out["seeds"].append({"seed": seed, "rows": rows})
        out["aggregate"] = aggregate(out["seeds"], [m["key"] for m in metrics])
        if out_json:
            Path(out_json).parent.mkdir(parents=True, exist_ok=True)
            Path(out_json).write_text(json.dumps(out, indent=2, default=str))
        if progress:
            key = metrics[0]["key"]
            print(json.dumps({"seed": seed, **{m: round(r[key], 2) for m, r in rows.items()}}), flush=True)
    return out


def aggregate(seeds: list[dict[str, Any]], keys: list[str]) -> dict[str, dict[str, float]]:
    """mean ± std (population) of each metric in `keys` per row over the seeds that have it."""
    methods = {m for s in seeds for m in s["rows"]}
    agg = {}
    for m in sorted(methods):
        vals = {k: np.array([s["rows"][m][k] for s in seeds if m in s["rows"]]) for k in keys}
        agg[m] = {f"{k}_{stat}": float(getattr(np, stat)(v)) for k, v in vals.items() for stat in ("mean", "std")}
        agg[m]["n_seeds"] = len(vals[keys[0]])
    return agg


def markdown(result: dict[str, Any]) -> str:
    """The aggregate as a table: method | each metric (mean ± std over seeds) | per seed (primary metric)."""
    metrics = result["metrics"]
    primary = metrics[0]
    head = " | ".join(m["label"] for m in metrics)
    lines = [f"| method | {head} | per seed ({primary['label']}) |", "|---" * (len(metrics) + 2) + "|"]
    for name, a in result["aggregate"].items():
        cells = " | ".join(f"{a[m['key'] + '_mean']:.1f} ± {a[m['key'] + '_std']:.1f}" for m in metrics)
        per = ", ".join(f"{s['rows'][name][primary['key']]:.1f}" for s in result["seeds"] if name in s["rows"])
        lines.append(f"| {name} | {cells} | {per} |")
    return "\n".join(lines)
