"""Starting or joining Ray for a training: a local instance listens on loopback only, and Ray's notices that a
user cannot act on stay off the console.

Loopback: on Linux Ray gives a node its outward address (`ray.init(_node_ip_address="127.0.0.1")` is turned back
into it), so its GCS, raylet, agents and workers listen on every interface. Ray's own local-only mode (the one it
uses on macOS and Windows, `RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`) makes the node address 127.0.0.1, and every
listener binds it. We turn it on only when this process starts its own Ray; joining a cluster
(`train.ray_address` or RAY_ADDRESS) leaves the addresses to the cluster's YAML. No dashboard, and no metrics
export (`enable_metrics_collection: false`), so no Prometheus endpoint is served at all.
"""

from __future__ import annotations

import logging
import os
from typing import Any

LOCAL_ONLY_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"  # read by ray._private.ray_constants at import
# (logger, message start) of notices that carry nothing a user of `posisp train` can act on
QUIET_NOTICES = (
    ("ray._private.authentication.authentication_token_setup", "Token authentication is enabled"),  # it stays on
    ("ray.rllib.algorithms.algorithm_config", "You are running PPO on the new API stack"),
    ("ray._common.deprecation", "DeprecationWarning: `RLModule(config="),  # RLlib builds its own modules so
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


def local_ray_kwargs() -> dict[str, Any]:
    """`ray.init` options for a Ray that this process starts on its own machine: loopback only, no metrics."""
    import ray._private.ray_constants as ray_constants

    os.environ[LOCAL_ONLY_ENV] = "0"  # for the processes Ray starts
    ray_constants.ENABLE_RAY_CLUSTER = False  # for this one, which imported Ray already
    return {"include_dashboard": False, "_system_config": {"enable_metrics_collection": False}}


def init_ray(address: str | None) -> bool:
    """Join `address` (or RAY_ADDRESS, as under `ray job submit`) or start a local Ray; True if started here."""
    import ray

    quiet_ray_notices()
    if ray.is_initialized():
        return False
    if address or os.environ.get("RAY_ADDRESS"):  # a cluster: its YAML sets the addresses
        import ray._private.ray_constants as ray_constants

        if os.environ.get(LOCAL_ONLY_ENV) == "0":  # a local Ray of ours ran in this process before: undo its mode
            del os.environ[LOCAL_ONLY_ENV]
            ray_constants.ENABLE_RAY_CLUSTER = True
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
    else:
        ray.init(log_to_driver=False, **local_ray_kwargs())
    return True
