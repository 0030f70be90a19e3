"""Every use of Ray's private API in this project, in one place: Ray 2.60.0 offers no public way to do these.

Checked against `RAY_VERSION_CHECKED`; `tests/test_ray_private.py` fails when Ray's version differs or when one of
the names below moves, disappears or stops doing what it is used for here. Nothing else in `posisp_dist` or
`envs` may name `ray._private`, `ray._common`, `ray._raylet` or `ray.autoscaler._private` (the test greps for it).

1. `loopback_only_node`: a Ray that this process starts listens on 127.0.0.1 only. On Linux Ray gives a new node
   its outward address: `ray.init(_node_ip_address="127.0.0.1")` is turned back into it
   (`ray._private.services.resolve_ip_for_localhost` -> `get_node_ip_address`), and Ray's GCS, raylet, agents and
   workers bind every interface unless the node address is a loopback one. Only Ray's local-only mode (the one
   it uses on macOS and Windows) keeps 127.0.0.1: `ray._private.ray_constants.ENABLE_RAY_CLUSTER`, read from
   RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER when Ray is first imported, so the variable alone is too late for a process
   that imported Ray already.
2. `prepare_and_validate_cluster_config`: the checks `ray up` runs before it talks to any cloud
   (`ray.autoscaler._private.util.prepare_config` and `validate_config`). The public
   `ray.autoscaler.sdk.fillout_defaults` covers only part of `prepare_config` (not the on-prem provider's node
   type, the per-type worker bounds or the Docker checks); a copy of the rest would drift from `ray up` unseen.
3. `PRIVATE_NOTICE_LOGGERS`: loggers of private Ray modules (`ray._private`, `ray._common`) whose notices
   `train/ray_local.py` filters by name; no public setting turns them off without turning token auth off.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

RAY_VERSION_CHECKED = "2.60.0"
LOCAL_ONLY_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"  # ray._private.ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR
# (logger, message start) of notices from private Ray modules that carry nothing a user of `posisp train` can act on
PRIVATE_NOTICE_LOGGERS = (
    ("ray._private.authentication.authentication_token_setup", "Token authentication is enabled"),  # it stays on
    ("ray._common.deprecation", "DeprecationWarning: `RLModule(config="),  # RLlib builds its own modules so
)


@contextmanager
def loopback_only_node() -> Iterator[None]:
    """While open, a Ray node that this process starts (`ray.init()` without an address, `ray.cluster_utils`)
    takes 127.0.0.1 as its address, so every process of it listens on loopback only; the processes it starts
    inherit the mode through the environment (the raylet passes it on to the workers it starts later).

    On leaving, this process and its environment are as before, so a later `ray.init(address=...)` that joins a
    cluster gets the outward address again (local-only mode would make it look for a raylet at 127.0.0.1)."""
    import ray._private.ray_constants as ray_constants

    if ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR != LOCAL_ONLY_ENV or not hasattr(ray_constants, "ENABLE_RAY_CLUSTER"):
        raise RuntimeError(f"Ray's local-only node mode moved (checked against Ray {RAY_VERSION_CHECKED})")
    saved_flag, saved_env = ray_constants.ENABLE_RAY_CLUSTER, os.environ.get(LOCAL_ONLY_ENV)
    os.environ[LOCAL_ONLY_ENV] = "0"  # for the processes Ray starts (read when they import Ray)
    ray_constants.ENABLE_RAY_CLUSTER = False  # for this one, which imported Ray already
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved_flag
        if saved_env is None:
            os.environ.pop(LOCAL_ONLY_ENV, None)
        else:
            os.environ[LOCAL_ONLY_ENV] = saved_env


def prepare_and_validate_cluster_config(raw: dict[str, Any], verbatim: bool = False) -> dict[str, Any]:
    """A cluster YAML's content as `ray up` resolves it (provider defaults filled in, unless `verbatim`), after
    Ray's JSON schema (ray/autoscaler/ray-schema.json) and node-type checks; Ray's own exception on a problem."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = raw if verbatim else prepare_config(raw)
    validate_config(config)
    return config
