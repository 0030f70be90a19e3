"""A multi-node Ray cluster on one machine (`ray.cluster_utils.Cluster`), for tests and the scaling benchmark.

Each node is its own raylet with its own object store, so data only moves between nodes through Ray (as on a
real cluster), though every node shares this machine's cores and disk. The worker nodes advertise a custom
`env_runner` resource and `train.env_runner_resources: {env_runner: 1}` puts EnvRunners only there.

Ray's temporary directory is made private for the cluster's lifetime: a `Cluster` writes its address to
`<tmp>/ray/ray_current_cluster`, which any plain `ray.init()` on the machine would otherwise join.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

RUNNER_RESOURCE = "env_runner"


@dataclass
class LocalCluster:
    """What a test or benchmark needs to know about the running cluster."""

    cluster: Any  # ray.cluster_utils.Cluster
    head_node_id: str
    worker_node_ids: list[str]
    temp_dir: str


@contextmanager
def local_cluster(
    workers: int = 2, cpus_per_worker: int = 1, runner_slots_per_worker: int = 1, head_cpus: int = 1
) -> Iterator[LocalCluster]:
    """Head plus `workers` worker nodes; `ray.init` is connected to it inside the block.

    A Ray instance this process already had is shut down first and a local one (2 CPUs, as the test suite's) is
    started again afterwards, so the tests that follow find Ray as they expect."""
    import ray
    from ray.cluster_utils import Cluster

    from posisp_dist.ray_private import loopback_only_node
    from posisp_dist.train.ray_local import start_local_ray

    had_ray = ray.is_initialized()
    if had_ray:
        ray.shutdown()
    old_tmp = os.environ.get("RAY_TMPDIR")
    tmp = tempfile.mkdtemp(prefix="pxr", dir="/tmp")  # short: Ray's socket paths must stay under 107 bytes
    os.environ["RAY_TMPDIR"] = tmp
    cluster = None
    try:
        # every node on 127.0.0.1, as a local Ray of `posisp train`, and the driver joins it there
        with loopback_only_node():
            cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": head_cpus, "include_dashboard": False})
            for _ in range(workers):
                cluster.add_node(num_cpus=cpus_per_worker, resources={RUNNER_RESOURCE: runner_slots_per_worker})
            cluster.wait_for_nodes()
            ray.init(address=cluster.address, log_to_driver=False)
        nodes = [n for n in ray.nodes() if n["Alive"]]
        worker_ids = sorted(n["NodeID"] for n in nodes if RUNNER_RESOURCE in n["Resources"])
        head_id = next(n["NodeID"] for n in nodes if RUNNER_RESOURCE not in n["Resources"])
        yield LocalCluster(cluster, head_id, worker_ids, tmp)
    finally:
        ray.shutdown()
        if cluster is not None:
            cluster.shutdown()
        if old_tmp is None:
            os.environ.pop("RAY_TMPDIR", None)
        else:
            os.environ["RAY_TMPDIR"] = old_tmp
        shutil.rmtree(tmp, ignore_errors=True)
        if had_ray:
            start_local_ray(num_cpus=2)
