"""The Ray cluster a run joins: which address, a fast reachability check, and cluster-YAML validation.

`ray.init` on an unreachable address only fails after its own retries, and the driver would first build the
dataset and detector; checking the TCP endpoint up front turns a typo into one clear line naming the address.
`validate_cluster_yaml` runs the checks `ray up` runs before it talks to any cloud, so an edited
`cluster/*.yaml` can be checked offline.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

LOCAL_ADDRESSES = (None, "", "auto", "local")


class ClusterUnreachable(ConnectionError):
    """The Ray address is malformed or nothing listens there; the message names the address."""


def effective_address(configured: str | None) -> str | None:
    """What `ray.init(address=configured)` will join: the config's address, else `RAY_ADDRESS` (job submit)."""
    return configured or os.environ.get("RAY_ADDRESS") or None


def parse_address(address: str) -> tuple[str, int]:
    """(host, port) of a GCS (`host:port`) or Ray Client (`ray://host:port`) address."""
    if address.startswith(("http://", "https://")):
        raise ClusterUnreachable(
            f"Ray address {address!r} is a dashboard URL (for `ray job submit --address`); training joins the "
            "cluster's GCS address (host:6379) or a Ray Client address (ray://host:10001). If RAY_ADDRESS holds "
            "it for the `ray job` CLI, unset it for `posisp train` or set train.ray_address"
        )
    parts = urlsplit(address if "://" in address else f"gcs://{address}")
    try:
        port = parts.port
    except ValueError:
        port = None
    if not parts.hostname or port is None:
        raise ClusterUnreachable(f"Ray address {address!r} is not host:port or ray://host:port")
    return parts.hostname, port


def check_reachable(address: str | None, timeout_s: float = 5.0) -> None:
    """Raise `ClusterUnreachable` naming `address` unless something accepts TCP connections there.

    None / "auto" / "local" mean a local (or auto-detected) Ray and are not checked.
    """
    if address in LOCAL_ADDRESSES:
        return
    host, port = parse_address(str(address))
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            pass
    except OSError as exc:
        raise ClusterUnreachable(
            f"cannot reach the Ray cluster at {address} ({exc}); is `ray start --head` running there, and is the "
            "address the GCS one (train.ray_address / RAY_ADDRESS)?"
        ) from None


class ClusterConfigError(ValueError):
    """A cluster YAML that Ray's launcher would reject; the message names the file and the problem."""


def validate_cluster_yaml(path: str | Path) -> dict[str, Any]:
    """The cluster config as Ray 2.60's launcher resolves it, after Ray's own schema and consistency checks.

    Mirrors `ray up`: fill in the provider's defaults, then Ray's JSON schema (ray/autoscaler/ray-schema.json) and
    node-type checks (`posisp_dist/ray_private.py`: Ray has no public API for them). A `fake_multinode` config is
    validated verbatim, as the autoscaler reads it (the 2.60 wheel ships no defaults file for that provider).
    """
    import yaml

    from posisp_dist.ray_private import prepare_and_validate_cluster_config

    try:
        raw = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as e:
        raise ClusterConfigError(f"cluster config {path} cannot be read: {e}") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("provider"), dict):
        raise ClusterConfigError(f"cluster config {path} must be a mapping with a `provider` section")
    try:
        return prepare_and_validate_cluster_config(raw, verbatim=raw["provider"].get("type") == "fake_multinode")
    except Exception as e:  # jsonschema.ValidationError, ValueError, click's abort: all mean "ray up would refuse"
        message = getattr(e, "message", None) or str(e)
        where = "/".join(str(p) for p in getattr(e, "absolute_path", []))
        raise ClusterConfigError(f"cluster config {path} is invalid{f' at {where}' if where else ''}: {message}") from e
