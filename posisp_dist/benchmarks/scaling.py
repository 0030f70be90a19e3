"""EnvRunner scaling: env steps/s against the number of EnvRunners on a 3-node local Ray cluster.

For each n the cluster is the head plus two worker nodes, and `data.transport: object_store` ships the shards
and detector weights to the runners, as on a real cluster. Weak scaling: every runner samples the same
`steps_per_runner` per iteration, so ideal throughput grows as n. The rate is end-to-end: env steps over
the whole iteration's wall time, central learner update included (RLlib's `env_runner_sampling_timer` is
smoothed across iterations, so it cannot give a per-iteration sampling time). Efficiency = rate(n) /
(n x rate(1)). All nodes of a local cluster share this machine's cores, which caps what more runners can
add: the JSON records the core count.

    posisp bench scaling --config configs/quick.yaml --json bench/results/scaling-cpu.json
"""

from __future__ import annotations

import math
import os
import platform
import statistics
import sys
import time
from collections import Counter
from typing import Any

from posisp_dist.config import Config


def bench_config(cfg: Config, runners: int, steps_per_runner: int) -> Config:
    """`cfg` with n EnvRunners pinned to the worker nodes, object-store transport and a weak-scaling batch."""
    raw = cfg.model_dump(mode="json")
    raw["data"]["transport"] = "object_store"
    raw["ppo"].update(train_batch_size=steps_per_runner * runners, minibatch_size=min(64, steps_per_runner))
    raw["ppo"]["num_epochs"] = 1
    raw["train"].update(num_env_runners=runners, env_runner_resources={"env_runner": 1})
    return Config.model_validate(raw)


def measure(cfg: Config, runners: int, iterations: int, warmup: int) -> dict[str, Any]:
    """Train n-runner PPO for warmup + iterations on a fresh 3-node cluster; rates over the measured ones."""
    from ray.rllib.utils.metrics import ENV_RUNNER_RESULTS, NUM_ENV_STEPS_SAMPLED
    from ray.tune.result import TIME_THIS_ITER_S

    from posisp_dist.benchmarks.local_cluster import local_cluster
    from posisp_dist.data.transport import ship
    from posisp_dist.train.algo_config import build_algo_config
    from posisp_dist.train.runners import describe_env_runners

    slots = math.ceil(runners / 2)  # two worker nodes: n=2 gets one runner per node, n=4 two per node
    with local_cluster(workers=2, cpus_per_worker=slots, runner_slots_per_worker=slots, head_cpus=0) as cluster:
        algo = build_algo_config(cfg, ship(cfg)).build_algo()
        try:
            results = [algo.train() for _ in range(warmup + iterations)][warmup:]
            placement = describe_env_runners(algo)
        finally:
            algo.stop()
        head = cluster.head_node_id
    steps = [float(r[ENV_RUNNER_RESULTS][NUM_ENV_STEPS_SAMPLED]) for r in results]
    wall = [float(r[TIME_THIS_ITER_S]) for r in results]
    nodes = Counter(p["node_id"] for p in placement)
    return {
        "runners": runners,
        "iterations": iterations,
        "env_steps": sum(steps),
        "env_steps_per_s": sum(steps) / sum(wall),
        "iteration_seconds_median": statistics.median(wall),
        "runners_per_node": sorted(nodes.values(), reverse=True),
        "runner_on_head": head in nodes,
    }


def add_efficiency(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per-runner rate and efficiency = rate(n) / (n x rate(1))."""
    base = next(r for r in rows if r["runners"] == 1)
    for row in rows:
        n = row["runners"]
        row["env_steps_per_s_per_runner"] = row["env_steps_per_s"] / n
        row["env_steps_per_s_efficiency"] = row["env_steps_per_s"] / (n * base["env_steps_per_s"])
    return rows


COLUMNS = (
    ("env steps/s", "env_steps_per_s"),
    ("per runner", "env_steps_per_s_per_runner"),
    ("efficiency", "env_steps_per_s_efficiency"),
)


def _cell(value: Any, key: str) -> str:
    if value is None:
        return "n/a"
    return f"{value:.2f}" if key.endswith("efficiency") else f"{value:.1f}"


def format_rows(rows: list[dict[str, Any]]) -> str:
    """The markdown table of bench/README.md."""
    lines = ["| EnvRunners | runners per worker node | " + " | ".join(c for c, _ in COLUMNS) + " |"]
    lines.append("|---" * (len(COLUMNS) + 2) + "|")
    for r in rows:
        cells = [_cell(r.get(key), key) for _, key in COLUMNS]
        lines.append(f"| {r['runners']} | {r['runners_per_node']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run(cfg: Config, runners: list[int], iterations: int, warmup: int, steps_per_runner: int) -> dict[str, Any]:
    from posisp_dist.data.build import build_dataset
    from posisp_dist.tasks import load_task_model

    build_dataset(cfg.data, cfg.seed, progress=False)  # once, before any cluster: the driver ships them
    load_task_model(cfg.task, cfg.data.root, progress=False, device="cpu")
    t0 = time.time()
    rows = [measure(bench_config(cfg, n, steps_per_runner), n, iterations, warmup) for n in sorted(runners)]
    return {
        "benchmark": "env_runner_scaling",
        "cluster": "ray.cluster_utils.Cluster: head (0 CPUs, driver + central learner) + 2 worker nodes; "
        "EnvRunners need the worker nodes' env_runner resource; data.transport = object_store",
        "cores": os.cpu_count(),
        "note": f"all 3 nodes share this machine's {os.cpu_count()} cores: beyond that many busy processes "
        "(runners + learner) more runners cannot add throughput",
        "machine": platform.platform(),
        "python": sys.version.split()[0],
        "image_size": cfg.data.image_size,
        "num_envs_per_runner": cfg.env.num_envs_per_runner,
        "steps_per_runner_per_iteration": steps_per_runner,
        "warmup_iterations": warmup,
        "wall_seconds": round(time.time() - t0, 1),
        "rows": add_efficiency(rows),
    }
