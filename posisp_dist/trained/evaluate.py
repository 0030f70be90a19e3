"""`posisp eval`: the baseline rows plus the learned policy's greedy pipelines on a split.

Both parts are pure functions of (data, task model, config, checkpoint, split), so they go through the
shared score cache (`cache.redis_url`): a second `posisp eval` of the same checkpoint, on any machine that
reaches the same Redis, reads the rows instead of recomputing them.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from posisp_dist.config import Config
from posisp_dist.runs.provenance import announce_retraining, check_data, check_task
from posisp_dist.runs.storage import fetch_run
from posisp_dist.runs.tracking import TrackingError


def policy_row(cfg: Config, ckpt: Path, split: str, res: dict[str, Any] | None = None) -> dict[str, Any]:
    """The learned policy's row: metrics and the greedy pipeline of every image of `split` (from `res`, a
    `greedy_on_split` result, when the caller already has one)."""
    from posisp_dist.methods import method_name
    from posisp_dist.trained.inference import greedy_on_split

    res = res or greedy_on_split(cfg, ckpt, split)
    core = res["core"]
    metrics = {m.key: res[m.key] for m in core.task.metrics}
    per_image = [
        {"image_id": int(i), "reward": round(float(r), 5), **core.executor.decode(t, p).to_json()}
        for i, r, t, p in zip(core.batch.ids, res["rewards"], res["tokens"], res["params"], strict=True)
    ]
    return {
        "method": method_name(cfg),
        **metrics,
        "score": res["score"],
        "reward_mean": float(np.mean(res["rewards"])),
        "pipelines": per_image,
    }


def policy_row_key(cfg: Config, ckpt: Path, split: str, task: Any) -> str | None:
    """Cache key of the policy row: data, task model, code, split, the policy's weights and the rollout config."""
    from posisp_dist.cache import checkpoint_fingerprint, eval_key
    from posisp_dist.data.shards import RawDataset
    from posisp_dist.trained.inference import MODULE_SUBDIR

    data_fp = RawDataset(cfg.data.root, split).fingerprint
    parts = {"checkpoint": checkpoint_fingerprint(ckpt, MODULE_SUBDIR), "env": cfg.env.model_dump()}
    return eval_key("policy", data_fp, split, task, **parts, isp=cfg.isp.model_dump(), policy=cfg.policy.model_dump())


def remember_policy_row(cfg: Config, ckpt: Path, split: str, res: dict[str, Any]) -> None:
    """Share a row computed elsewhere (training's final val report), so `posisp eval` of it is a cache hit."""
    from posisp_dist.cache import open_cache

    key = policy_row_key(cfg, ckpt, split, res["core"].task)
    if key is not None:
        open_cache(cfg.cache).put_json(key, json.loads(json.dumps(policy_row(cfg, ckpt, split, res))))


def evaluate_run(
    run_id: str, split: str = "test", tracking_uri: str | None = None, progress: bool = True, baselines: bool = True,
    rebuild_data: bool = False,
) -> dict:
    """Rows {method, <the task's metrics>, score} for the baselines (unless `baselines=False`) and the learned
    policy, and the task's `metrics` (key, label, direction; primary first); logged to the run as well. The data
    and task model must be the run's (`train.provenance`); `rebuild_data` regenerates the run's built-in data."""
    from posisp_dist.baselines.table import baseline_table
    from posisp_dist.cache import cached_json, eval_key, open_cache
    from posisp_dist.data.shards import RawDataset
    from posisp_dist.isp.xp import get_xp
    from posisp_dist.tasks import load_task_model

    cfg, ckpt, tracker = fetch_run(run_id, tracking_uri)
    tags = tracker.get_run(run_id).data.tags
    check_data(cfg, run_id, tags, rebuild=rebuild_data)
    announce_retraining(cfg)
    task = load_task_model(cfg.task, cfg.data.root, progress=progress)
    check_task(run_id, tags, task)
    cache = open_cache(cfg.cache)
    rows: list[dict[str, Any]] = []
    if baselines:
        parts = {"baselines": cfg.baselines.model_dump(), "isp": cfg.isp.model_dump()}
        key = eval_key("baselines", RawDataset(cfg.data.root, split).fingerprint, split, task, **parts)
        rows = cached_json(cache, key, lambda: baseline_table(cfg, task, split, get_xp(cfg.isp.backend)))
    row = cached_json(cache, policy_row_key(cfg, ckpt, split, task), lambda: policy_row(cfg, ckpt, split))
    rows.append({**row, "checkpoint": str(ckpt)})
    payload = {"run_id": run_id, "split": split, "metrics": [m.to_json() for m in task.metrics], "rows": rows}
    try:  # the rows are the result; a store that cannot take them (read-only) costs a warning, not the table
        tracker.attach(run_id)
        tracker.log_dict(payload, f"eval/{split}.json")
        tracker.log_metrics({f"eval/{split}_{m.key}": rows[-1][m.key] for m in task.metrics}, step=0)
    except TrackingError as e:
        print(f"posisp: warning: the eval rows were not logged to run {run_id}: {e}", file=sys.stderr)
    return payload
