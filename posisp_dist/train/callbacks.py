"""RLlib callbacks: bind each EnvRunner's env to its data shards, and report ISP metrics per episode."""

from __future__ import annotations

import math
from typing import Any

from ray.rllib.callbacks.callbacks import RLlibCallback

from envs.sequence_isp import FIRST_OF_IMAGE

TASK_COUNTERS = ("task_calls", "task_images", "task_backward_images")  # kept by the env's core (envs/core.py)
EPISODE_METRICS = ("task_score", "ref_score", "cost", "length", "pathwise_loss")
RESTART_METRIC = "fault/env_runner_restarted_"  # + worker index; summed per iteration
_restart_reported = False  # once per EnvRunner process: RLlib may rebuild envs within one actor


def _restarted_actor() -> bool:
    """True in an EnvRunner actor that Ray has restarted (killed, OOM, lost node), False elsewhere.

    Asked of Ray itself: RLlib 2.60 counts a restart (`num_remote_worker_restarts`) only once its own health
    probe brings the actor back, names no worker, and starts from 0 again in a resumed driver."""
    import ray

    if not ray.is_initialized() or ray.get_runtime_context().get_actor_id() is None:
        return False
    return bool(ray.get_runtime_context().was_current_actor_reconstructed)


class ISPCallbacks(RLlibCallback):
    """`isp/*` metrics: per-episode task score, reference score, cost and length (means), and the
    work counters of each EnvRunner (ISP module runs, kernel calls and task-model calls, sums); and
    `fault/env_runner_restarted_<k>` once from an EnvRunner that Ray restarted."""

    def on_environment_created(
        self, *, env_runner: Any, env: Any, env_context: Any, metrics_logger: Any = None, **kwargs: Any
    ) -> None:
        bind = getattr(env, "bind_worker", None)
        if bind is not None:  # RLlib hands vector entry points no worker_index: give it here
            bind(env_context.worker_index, env_context.num_workers)
        self._last_counts: dict[str, int] = {}
        global _restart_reported
        if metrics_logger is not None and not _restart_reported and _restarted_actor():
            _restart_reported = True  # the driver turns this into an MLflow event (train/driver.py)
            metrics_logger.log_value(f"{RESTART_METRIC}{env_context.worker_index}", 1, reduce="sum")

    def on_episode_end(self, *, episode: Any, metrics_logger: Any = None, **kwargs: Any) -> None:
        info = dict(episode.get_infos(-1))
        if "cost" in info:  # step-wise episodes pay per step: the pipeline's cost is the sum
            info["cost"] = sum(float(i.get("cost", 0.0)) for i in episode.get_infos())
        for key in EPISODE_METRICS:  # (a pipeline outside `policy.pathwise_fraction`'s subset has no loss: NaN)
            if key in info and math.isfinite(float(info[key])):
                metrics_logger.log_value(f"isp/{key}", float(info[key]), reduce="mean")
        # a distinct training image per episode, or per group of K pipelines on one image (the sequence env's K)
        metrics_logger.log_value("isp/distinct_images", int(bool(info.get(FIRST_OF_IMAGE, True))), reduce="sum")
        if "task_score" in info and "ref_score" in info:
            metrics_logger.log_value("isp/score_gain", float(info["task_score"] - info["ref_score"]), reduce="mean")

    def on_sample_end(self, *, env_runner: Any = None, metrics_logger: Any = None, **kwargs: Any) -> None:
        source = getattr(getattr(env_runner, "env", None), "unwrapped", None)
        core = getattr(getattr(source, "source", None), "_core", None) or getattr(source, "source", None)
        executor = getattr(core, "executor", None)
        if executor is None:
            return
        counts = {  # Counters' names (runs/counters.py), and the kernel calls behind the module runs
            "module_runs": executor.stats.module_runs,
            "module_calls": executor.stats.module_calls,
            **{name: getattr(core, name) for name in TASK_COUNTERS},
        }
        last = getattr(self, "_last_counts", {})
        for key, value in counts.items():
            metrics_logger.log_value(f"isp/{key}", value - last.get(key, 0), reduce="sum")
        # seconds this sample spent in the torch twin + task-loss backward (summed over EnvRunners)
        spent = core.pathwise_seconds - last.get("_pathwise_s", 0.0)
        metrics_logger.log_value("time/pathwise_grad_s", spent, reduce="sum")
        self._last_counts = {**counts, "_pathwise_s": core.pathwise_seconds}
