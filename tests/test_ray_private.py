"""`posisp_dist/ray_private.py` is the only place that uses Ray's private API, and each use still does what it is
there for in the installed Ray: a Ray upgrade that moves or changes one fails here, not silently in a run."""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from posisp_dist import ray_private
from posisp_dist.ray_private import (
    LOCAL_ONLY_ENV,
    PRIVATE_NOTICE_LOGGERS,
    RAY_VERSION_CHECKED,
    prepare_and_validate_cluster_config,
)

REPO = Path(__file__).resolve().parents[1]
PRIVATE = re.compile(r"ray\._private|_raylet|autoscaler\._private|ray\._common")


def test_ray_is_the_version_the_private_uses_were_checked_against():
    import ray

    assert ray.__version__ == RAY_VERSION_CHECKED, (
        f"Ray {ray.__version__} is installed: re-check every use in posisp_dist/ray_private.py (public replacements "
        f"first), then update RAY_VERSION_CHECKED"
    )


def test_no_private_ray_name_outside_the_adapter():
    adapter = Path(ray_private.__file__).resolve()
    found = [
        f"{path.relative_to(REPO)}:{n}: {line.strip()}"
        for base in ("posisp_dist", "envs")
        for path in sorted((REPO / base).rglob("*.py"))
        if path.resolve() != adapter
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if PRIVATE.search(line)
    ]
    assert found == []
    assert PRIVATE.search(adapter.read_text())  # the pattern does find the adapter's own uses


LOOPBACK_PROBE = """
import json, os
import ray.util
from posisp_dist.ray_private import LOCAL_ONLY_ENV, loopback_only_node
import ray._private.services as services

before = (ray.util.get_node_ip_address(), os.environ.get(LOCAL_ONLY_ENV))
with loopback_only_node():
    # what ray.init does with no address / with _node_ip_address="127.0.0.1" (Ray has not started here)
    localhost = services.resolve_ip_for_localhost("127.0.0.1")
    inside = (ray.util.get_node_ip_address(), localhost, os.environ[LOCAL_ONLY_ENV])
after = (ray.util.get_node_ip_address(), os.environ.get(LOCAL_ONLY_ENV))
print("POSISP-PROBE", json.dumps({"before": before, "inside": inside, "after": after}))
"""


def test_loopback_only_node_gives_a_new_node_127_0_0_1_only_while_open():
    """In a fresh process (this one may hold a Ray already, whose address would be answered instead)."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", LOCAL_ONLY_ENV)}
    out = subprocess.run([sys.executable, "-c", LOOPBACK_PROBE], capture_output=True, text=True, env=env, cwd=REPO,
                         timeout=180)
    assert out.returncode == 0, out.stderr[-3000:]
    probe = json.loads(next(x for x in out.stdout.splitlines() if x.startswith("POSISP-PROBE ")).split(" ", 1)[1])
    assert probe["inside"] == ["127.0.0.1", "127.0.0.1", "0"]
    assert probe["after"] == probe["before"] and probe["after"][1] is None  # nothing left for a later join


def _token_notice() -> None:
    from ray._private.authentication import authentication_token_setup

    authentication_token_setup._warn_token_auth_enabled()


def _rl_module_config_notice() -> None:
    from ray._common.deprecation import deprecation_warning

    deprecation_warning(old="RLModule(config=[RLModuleConfig object])", error=False)  # as RLlib's RLModule calls it


NOTICE_EMITTERS: dict[str, Callable[[], None]] = {
    "ray._private.authentication.authentication_token_setup": _token_notice,
    "ray._common.deprecation": _rl_module_config_notice,
}


@pytest.mark.parametrize("name, start", PRIVATE_NOTICE_LOGGERS)
def test_ray_still_logs_each_filtered_notice_on_the_named_logger(name, start):
    log, seen = logging.getLogger(name), []

    class Grab(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record.getMessage())

    grab, level, filters = Grab(logging.WARNING), log.level, log.filters[:]
    for f in filters:  # our own notice filter, installed by any earlier test that started Ray, drops them first
        log.removeFilter(f)
    log.addHandler(grab)
    log.setLevel(logging.WARNING)
    try:
        NOTICE_EMITTERS[name]()
    finally:
        log.removeHandler(grab)
        log.setLevel(level)
        for f in filters:
            log.addFilter(f)
    assert [m for m in seen if m.startswith(start)], f"Ray no longer logs {start!r} on {name}: {seen}"


def test_rays_own_cluster_checks_resolve_a_good_config_and_reject_a_bad_one():
    import jsonschema

    raw = yaml.safe_load((REPO / "cluster" / "onprem.yaml").read_text())
    config = prepare_and_validate_cluster_config(raw)
    (node_type,) = config["available_node_types"]  # the on-prem provider's one node type, filled in by Ray
    assert config["head_node_type"] == node_type and config["available_node_types"][node_type]["max_workers"] == 2
    assert config["worker_setup_commands"] == raw["setup_commands"]  # setup commands merged in, as `ray up` does
    with pytest.raises(jsonschema.ValidationError, match="max_worker"):
        prepare_and_validate_cluster_config({**raw, "max_worker": 3})
    fake = yaml.safe_load((REPO / "cluster" / "local-autoscale.yaml").read_text())
    assert prepare_and_validate_cluster_config(fake, verbatim=True) is fake
    with pytest.raises(RuntimeError, match="cluster_synced_files"):
        prepare_and_validate_cluster_config({k: v for k, v in fake.items() if k != "cluster_synced_files"}, True)
