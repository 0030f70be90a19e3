"""`posisp eval`: the baseline rows plus the learned policy's greedy pipelines on a split."""

from __future__ import annotations

from typing import Any

import numpy as np

from posisp_dist.train.driver import fetch_run


def evaluate_run(
    run_id: str, split: str = "test", tracking_uri: str | None = None, progress: bool = True, baselines: bool = True
) -> dict:
    """Rows {method, map, map50, score} for the baselines (unless `baselines=False`) and the learned policy;
    logged to the run as well."""
    from posisp_dist.baselines.table import baseline_table
    from posisp_dist.isp.xp import get_xp
    from posisp_dist.tasks import load_task_model
    from posisp_dist.train.report import greedy_on_split, method_name

    cfg, ckpt, tracker = fetch_run(run_id, tracking_uri)
    rows: list[dict[str, Any]] = []
    if baselines:
        task = load_task_model(cfg.task, cfg.data.root, progress=progress)
        rows = baseline_table(cfg, task, split, get_xp(cfg.isp.backend))
    res = greedy_on_split(cfg, ckpt, split)
    core = res["core"]
    per_image = [
        {"image_id": int(i), "reward": round(float(r), 5), **core.executor.decode(t, p).to_json()}
        for i, r, t, p in zip(core.batch.ids, res["rewards"], res["tokens"], res["params"], strict=True)
    ]
    rows.append(
        {
            "method": method_name(cfg),
            "map": res["map"],
            "map50": res["map50"],
            "score": res["score"],
            "reward_mean": float(np.mean(res["rewards"])),
            "checkpoint": str(ckpt),
            "pipelines": per_image,
        }
    )
    payload = {"run_id": run_id, "split": split, "rows": rows}
    tracker.attach(run_id)
    tracker.log_dict(payload, f"eval/{split}.json")
    tracker.log_metrics({f"eval/{split}_map": res["map"], f"eval/{split}_map50": res["map50"]}, step=0)
    return payload
