"""Where the remote EnvRunners are and what they hold, and the fault events they report.

Asked of the runner actors themselves (`foreach_env_runner`), so the answer is what Ray actually did: the node
each runner landed on, its process, how its data arrived and which shards and images it reads. The driver logs
it as `env_runners.json`; the multi-node test and the scaling benchmark check placement and disjointness with it.
"""

from __future__ import annotations

import math
import os
import time
from typing import Any

from posisp_dist.train.callbacks import RESTART_METRIC


def _describe(runner: Any) -> dict[str, Any]:
    """Runs inside one EnvRunner actor; never raises, because RLlib ends an actor whose remote call raised."""
    import ray

    out: dict[str, Any] = {
        "worker_index": int(runner.worker_index),
        "node_id": ray.get_runtime_context().get_node_id(),
        "pid": os.getpid(),
    }
    try:
        source = getattr(getattr(runner.env, "unwrapped", None), "source", None)
        core = getattr(source, "_core", None)  # None until the first reset loaded the data
        out["transport"] = "object_store" if getattr(source, "shipment", None) is not None else "filesystem"
        out["shards"] = source.shards() if source is not None else None
        out["image_ids"] = None if core is None else [int(i) for i in core.batch.ids]
    except Exception as exc:  # a description is never worth a runner
        out["error"] = f"{type(exc).__name__}: {exc}"
    return out


def describe_env_runners(algo: Any) -> list[dict[str, Any]]:
    """One record per healthy remote EnvRunner, by worker index."""
    found = algo.env_runner_group.foreach_env_runner(_describe, local_env_runner=False)
    return sorted(found, key=lambda r: r["worker_index"])


def restart_events(runner_results: dict[str, Any], iteration: int, env_steps: int) -> list[dict[str, Any]]:
    """Turn this iteration's `fault/env_runner_restarted_<k>` counts into one event per restart."""
    events = []
    for key, value in sorted(runner_results.items()):
        if key.startswith(RESTART_METRIC):
            if not isinstance(value, int | float) or not math.isfinite(value):
                continue  # RLlib reports the key as NaN in the iterations after the one that carried it
            worker = int(key[len(RESTART_METRIC) :])
            event = {"event": "env_runner_restarted", "worker_index": worker, "iteration": iteration}
            events += [{**event, "env_steps": env_steps, "time": time.time()} for _ in range(int(value))]
    return events
