"""End-of-run artifacts: greedy pipelines on the val split, their mAP, the best pipelines as JSON, the
learning curve and a picture grid of input RAW vs learned ISP with detections."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from posisp_dist.config import Config
from posisp_dist.isp.xp import to_numpy
from posisp_dist.train.tracking import Tracker

# the learning curve: the reward and the metric it must follow (greedy val mAP at each selection point) first
CURVE_KEYS = ("charts/episode_reward_mean", "eval/val_map_selection", "isp/task_score", "isp/length",
              "losses/entropy", "losses/kl", "isp/pathwise_loss")


def greedy_on_split(cfg: Config, checkpoint: str | Path, split: str, core: Any = None) -> dict[str, Any]:
    """Greedy pipelines of the checkpoint's policy on every image of `split`, run and scored in batches
    (`core`: that split's `ISPTaskCore`, when the caller keeps one)."""
    from envs.factory import CoreSource
    from posisp_dist.train.inference import load_policy, policy_pipelines

    core = core if core is not None else CoreSource(cfg, split).get()
    module = load_policy(checkpoint)
    tokens, params = policy_pipelines(module, core.images, core.executor, core.preview_size, stepwise_steps(cfg))
    chunks = [
        core.evaluate(np.arange(i, min(i + 64, len(core))), tokens[i : i + 64], params[i : i + 64], keep_output=True)
        for i in range(0, len(core), 64)
    ]
    outputs = core.xp.concatenate([c.output for c in chunks])
    rewards = np.concatenate([c.reward for c in chunks])
    metric = core.task.evaluate(outputs, core.targets)
    return {"core": core, "tokens": tokens, "params": params, "outputs": outputs, "rewards": rewards, **metric,
            "score": float(np.mean(np.concatenate([c.task_score for c in chunks])))}


def stepwise_steps(cfg: Config) -> int | None:
    """K for a step-wise run, None for the sequence policy."""
    return cfg.env.max_steps if cfg.env.kind == "stepwise" else None


def final_report(cfg: Config, tracker: Tracker, checkpoint: str | Path) -> dict[str, Any]:
    """Log val metrics, best_pipelines.json, learning_curve.png and isp_grid.png to the run."""
    from posisp_dist.train.evaluate import remember_policy_row
    from posisp_dist.train.figures import learning_curve_png
    from posisp_dist.train.inference import pipeline_summary

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
    tracker.log_metrics(
        {"eval/val_map": res["map"], "eval/val_map50": res["map50"], "eval/val_reward_mean": summary["mean_reward"]},
        step=step,
    )
    with tempfile.TemporaryDirectory() as tmp:
        history = {k: tracker.history(k) for k in CURVE_KEYS}
        tracker.log_artifact(learning_curve_png(history, Path(tmp) / "learning_curve.png", "sequence PPO"))
        tracker.log_artifact(grid_png(core, res, cfg.train.grid_images, Path(tmp) / "isp_grid.png"))
    return {
        "val_map": res["map"],
        "val_map50": res["map50"],
        "val_reward_mean": summary["mean_reward"],
        "top_sequence": summary["sequences"][0]["modules"] if summary["sequences"] else [],
    }


def grid_png(core: Any, res: dict[str, Any], n: int, path: Path) -> Path:
    """Input RAW vs learned ISP for the first `n` images, with ground truth and detections."""
    from posisp_dist.train.figures import comparison_grid_png

    n = min(n, len(core))
    inputs, outputs = to_numpy(core.images[:n]), to_numpy(res["outputs"][:n])
    det_in, det_out = core.task.predict(core.images[:n]), core.task.predict(res["outputs"][:n])
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
