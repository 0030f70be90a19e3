"""`posisp seeds`: one config trained and evaluated over several seeds, each seed regenerating the data and
retraining the task model, written as one JSON of per-seed rows plus mean ± std: a result is a
distribution, never one seed.

Rows per seed: the baselines (clean sRGB, input RAW, camera ISP, random search), the learned policy
(`sequence_ppo`: the config as given) and, with `--ppo-params`, the same budget with the parameters learned
by PPO (`sequence_ppo_ppo_params`), each with the metrics the task declares (a detector: map, map50). Each
learned row is a `RunResult.row` (its compute counters, training seconds and val curve of the primary metric)
plus the final val value against the best seen (the metric must follow the reward). Rows, aggregate, table
and file come from `experiments/results.py`, as for `posisp compare`.
"""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path
from typing import Any

from posisp_dist.config import Config, load_config
from posisp_dist.experiments.results import aggregate, metric_columns, table, write_json
from posisp_dist.experiments.run import run_method
from posisp_dist.methods import method_name
from posisp_dist.runs.counters import Counters


def seed_config(path: str | Path, seed: int, overrides: dict[str, Any] | None = None) -> Config:
    """The config for one seed: the experiment seed and the task model's training seed (for kinds trained here)
    both follow it, so the data (its fingerprint includes the seed) and the task model are made anew."""
    base = {**(overrides or {}), "seed": seed}
    cfg = load_config(path, base)
    if "train" not in type(cfg.task).model_fields:  # a task model from the user's weights: nothing to retrain
        return cfg
    return load_config(path, {**base, "task.train.seed": seed})


def learned_row(cfg: Config, progress: bool, baselines: bool) -> tuple[dict[str, Any], Any]:
    """-> (the learned row, its `RunResult`)."""
    result = run_method(cfg, "test", progress=progress, baselines=baselines)
    row = result.row(method_name(cfg), cfg.seed)
    history = [p["val"] for p in result.curve]
    best = (max if result.metrics[0]["higher_is_better"] else min)(history) if history else None
    row["final_over_best_val"] = (history[-1] / best) if best else None
    return row, result


def run_seeds(
    config: str | Path, seeds: list[int], overrides: dict[str, Any] | None = None, ppo_params: bool = False,
    progress: bool = True, out_json: str | Path | None = None,
) -> dict[str, Any]:
    """Train + evaluate `config` for each seed; -> {"command", "config", "metrics", "rows", "aggregate"}.
    With `out_json` the file is rewritten after every seed, so a stopped run keeps the seeds it finished."""
    out: dict[str, Any] = {"command": shlex.join(["posisp", *sys.argv[1:]]), "config": str(config), "rows": []}
    for seed in seeds:
        cfg = seed_config(config, seed, overrides)
        learned, result = learned_row(cfg, progress, baselines=True)
        metrics = out["metrics"] = result.metrics
        keys = [m["key"] for m in metrics]
        rows = [{"method": b["method"], "seed": seed, **{k: b[k] for k in keys}} for b in result.baselines]
        rows.append(learned)
        if ppo_params:
            ppo_cfg = seed_config(config, seed, {**(overrides or {}), "policy.param_learning": "ppo"})
            rows.append(learned_row(ppo_cfg, progress, baselines=False)[0])
        out["rows"] += rows
        out["aggregate"] = aggregate(out["rows"], [*keys, *Counters.names(), "train_seconds"])
        if out_json:
            write_json(out_json, out)
        if progress:
            print(json.dumps({"seed": seed, **{r["method"]: round(r[keys[0]], 2) for r in rows}}), flush=True)
    return out


def markdown(result: dict[str, Any]) -> str:
    """The aggregate as a table: method | each metric (mean ± std over seeds) | per seed (primary metric)."""
    metrics = result["metrics"]
    return table(result["aggregate"], metric_columns(metrics), result["rows"], (metrics[0]["label"], metrics[0]["key"]))
