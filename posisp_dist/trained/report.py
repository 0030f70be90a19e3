"""End-of-run artifacts: greedy pipelines on the val split, their mAP, the best pipelines as JSON, the
learning curve and a picture grid of input RAW vs learned ISP with detections."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from posisp_dist.config import Config
from posisp_dist.isp.xp import to_numpy
from posisp_dist.runs.tracking import Tracker


def curve_keys(cfg: Config) -> tuple[str, ...]:
    """The learning curve: the reward and the metric it must follow (the task's primary metric, greedy on val
    at each selection point) first, then the pipeline's score, length and the learners' losses."""
    from posisp_dist.runs.storage import selection_key

    return ("charts/episode_reward_mean", selection_key(cfg), "isp/task_score", "isp/length", "losses/entropy",
            "losses/kl", "isp/pathwise_loss")


def final_report(cfg: Config, tracker: Tracker, checkpoint: str | Path) -> dict[str, Any]:
    """Log val metrics, best_pipelines.json, learning_curve.png and isp_grid.png to the run."""
    from posisp_dist.trained.evaluate import remember_policy_row
    from posisp_dist.trained.figures import learning_curve_png
    from posisp_dist.trained.inference import greedy_on_split, pipeline_summary

    res = greedy_on_split(cfg, checkpoint, "val")
    remember_policy_row(cfg, Path(checkpoint), "val", res)  # `posisp eval --split val` of it: a cache hit
    core = res["core"]
    summary = pipeline_summary(core.executor, res["tokens"], res["params"], res["rewards"])
    summary["per_image"] = [
        {"image_id": int(i), "reward": float(r), **core.executor.decode(t, p).to_json()}
        for i, r, t, p in zip(core.batch.ids, res["rewards"], res["tokens"], res["params"], strict=True)
    ]
    tracker.log_dict(summary, "best_pipelines.json")
    step = int(max((s for s, _ in tracker.history("charts/iteration")), default=0))
    metrics = core.task.metrics
    values = {m.key: float(res[m.key]) for m in metrics}
    tracker.log_metrics(
        {**{f"eval/val_{k}": v for k, v in values.items()}, "eval/val_reward_mean": summary["mean_reward"]}, step=step
    )
    with tempfile.TemporaryDirectory() as tmp:
        history = {k: tracker.history(k) for k in curve_keys(cfg)}
        tracker.log_artifact(learning_curve_png(history, Path(tmp) / "learning_curve.png", "sequence PPO"))
        tracker.log_artifact(grid_png(core, res, cfg.train.grid_images, Path(tmp) / "isp_grid.png"))
    return {
        "metrics": [m.to_json() for m in metrics],
        "val_metrics": values,
        "val_reward_mean": summary["mean_reward"],
        "top_sequence": summary["sequences"][0]["modules"] if summary["sequences"] else [],
    }


def grid_png(core: Any, res: dict[str, Any], n: int, path: Path) -> Path:
    """Input RAW vs learned ISP for the first `n` images, with ground truth and, for a detector, detections."""
    from posisp_dist.trained.figures import comparison_grid_png

    n = min(n, len(core))
    inputs, outputs = to_numpy(core.images[:n]), to_numpy(res["outputs"][:n])
    predict = getattr(core.task, "predict", None)  # a detector draws its boxes; other tasks show images only
    det_in, det_out = (predict(core.images[:n]), predict(res["outputs"][:n])) if predict else ([None] * n, [None] * n)
    rows = [
        {
            "input": inputs[i],
            "output": outputs[i],
            "targets": core.targets[i],
            "det_input": det_in[i],
            "det_output": det_out[i],
            "pipeline": list(core.executor.decode(res["tokens"][i], res["params"][i]).modules),
            "title": f"image {int(core.batch.ids[i])}",
        }
        for i in range(n)
    ]
    return comparison_grid_png(rows, core.task.classes, path, max_rows=n)
