"""Starting or joining Ray for a training: a local instance listens on loopback only, and Ray's notices that a
user cannot act on stay off the console.

Loopback: a Ray that this process starts takes 127.0.0.1 as its node address, so its GCS, raylet, agents and
workers listen on loopback only. Ray 2.60 has no public switch for that on Linux; `posisp_dist/ray_private.py`
holds the one it uses (Ray's local-only node mode), for the `ray.init` call only: joining a cluster
(`train.ray_address` or RAY_ADDRESS), even later in the same process, leaves the addresses to the cluster's YAML.
No dashboard, and no metrics export (`enable_metrics_collection: false`), so no Prometheus endpoint is served.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from posisp_dist.ray_private import PRIVATE_NOTICE_LOGGERS, loopback_only_node

# (logger, message start) of notices that carry nothing a user of `posisp train` can act on
QUIET_NOTICES = (
    *PRIVATE_NOTICE_LOGGERS,  # token authentication is enabled, RLModule(config=) deprecation
    ("ray.rllib.algorithms.algorithm_config", "You are running PPO on the new API stack"),
    ("ray.tune.utils.util", "Install gputil"),
    ("ray.tune.trainable.trainable", "Trainable.setup took"),
)


class _DropNotices(logging.Filter):
    def __init__(self, starts: tuple[str, ...]) -> None:
        super().__init__()
        self.starts = starts

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.getMessage()).startswith(self.starts)


def quiet_ray_notices() -> None:
    """Drop the notices of QUIET_NOTICES from their loggers (once per process; other records pass)."""
    by_logger: dict[str, tuple[str, ...]] = {}
    for name, start in QUIET_NOTICES:
        by_logger[name] = (*by_logger.get(name, ()), start)
    for name, starts in by_logger.items():
        log = logging.getLogger(name)
        if not any(isinstance(f, _DropNotices) for f in log.filters):
            log.addFilter(_DropNotices(starts))


def start_local_ray(**options: Any) -> None:
    """`ray.init` a Ray of this process's own on this machine: loopback only, no dashboard, no metrics;
    `options` (e.g. num_cpus) are passed on."""
    import ray

    local = {"log_to_driver": False, "include_dashboard": False, "_system_config": {"enable_metrics_collection": False}}
    with loopback_only_node():
        ray.init(**{**local, **options})


def init_ray(address: str | None) -> bool:
    """Join `address` (or RAY_ADDRESS, as under `ray job submit`) or start a local Ray; True if started here."""
    import ray

    quiet_ray_notices()
    if ray.is_initialized():
        return False
    if address or os.environ.get("RAY_ADDRESS"):  # a cluster: its YAML sets the addresses
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
    else:
        start_local_ray()
    return True
