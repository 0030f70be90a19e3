"""The local Ray a training starts listens on loopback only (workers it starts later included) and serves no metrics,
and leaves no local-only mode behind for a later cluster join; Ray's notices that a user cannot act on (token
notice, new API stack, RLModule deprecation, gputil) stay off the console."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from posisp_dist.ray_private import LOCAL_ONLY_ENV
from posisp_dist.train.ray_local import QUIET_NOTICES, quiet_ray_notices

REPO = Path(__file__).resolve().parents[1]

def ray_listeners(session: str, pids: tuple[int, ...] = ()) -> list[tuple[str, str]]:
    """(address, command) of every listening socket of the Ray session's processes, of this process and of
    `pids` (Ray workers retitle themselves `ray::<class>`, so their command line need not name the session)."""
    import re

    found = []
    for line in subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True, check=True).stdout.splitlines():
        cols = line.split()
        for pid in re.findall(r"pid=(\d+)", " ".join(cols[5:])):
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if session in cmd or int(pid) in (os.getpid(), *pids):
                found.append((cols[3], f"pid {pid}: {cmd[:80]}"))
    return found


def session_dir(ray) -> str:
    """This Ray session's folder, from the public node table (the object store socket lives inside it)."""
    return str(Path(ray.nodes()[0]["ObjectStoreSocketName"]).parents[1])


def beyond_loopback(found: list[tuple[str, str]]) -> list[tuple[str, str]]:
    return [(a, c) for a, c in found if not a.rsplit(":", 1)[0].strip("[]").endswith("127.0.0.1")]


PROBE = r"""
import json, os
from posisp_dist.ray_private import LOCAL_ONLY_ENV
from posisp_dist.train.ray_local import init_ray
from test_ray_local import ray_listeners, session_dir
import ray

@ray.remote(num_cpus=0)
class Late:  # a worker the raylet starts after ray.init returned (and this process left local-only mode)
    def pid(self):
        return os.getpid()

assert init_ray(None)
assert LOCAL_ONLY_ENV not in os.environ  # left as it was: a later cluster join here gets the outward address
late = Late.remote()
pid = ray.get(late.pid.remote(), timeout=120)
print("POSISP-LATE", pid)
print("POSISP-LISTEN", json.dumps(ray_listeners(session_dir(ray), (pid,))))
ray.shutdown()
"""


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("ss") is None, reason="needs ss (iproute2) to list listening sockets")
def test_a_local_ray_listens_on_loopback_only_and_prints_no_token_notice():
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", LOCAL_ONLY_ENV)}
    env["RAY_TMPDIR"] = tmp = tempfile.mkdtemp(prefix="pxl", dir="/tmp")  # short: Ray's socket paths must fit
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).parent), env.get("PYTHONPATH", "")])
    try:
        out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, env=env, cwd=REPO,
                             timeout=240)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    assert out.returncode == 0, out.stderr[-3000:]
    line = next(x for x in out.stdout.splitlines() if x.startswith("POSISP-LISTEN "))
    late = next(x for x in out.stdout.splitlines() if x.startswith("POSISP-LATE ")).split()[1]
    listeners = json.loads(line.split(" ", 1)[1])
    assert len(listeners) >= 3  # GCS, raylet, the driver's own core worker at least
    assert any(c.startswith(f"pid {late}:") for _, c in listeners)  # the late worker's own gRPC server is listed
    exposed = beyond_loopback([tuple(x) for x in listeners])
    assert not exposed, f"listening beyond loopback: {exposed}"
    assert "Token authentication is enabled" not in out.stderr


@pytest.mark.parametrize("name, start", QUIET_NOTICES)
def test_rays_unactionable_notices_are_dropped_and_other_records_pass(name, start):
    quiet_ray_notices()
    log, seen = logging.getLogger(name), []

    class Grab(logging.Handler):  # on the logger itself: Ray's loggers need not propagate to the root
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record.getMessage())

    grab, level = Grab(logging.WARNING), log.level
    log.addHandler(grab)
    log.setLevel(logging.WARNING)
    try:
        log.warning(start + " and the rest of the notice")
        log.warning("a warning that matters")
    finally:
        log.removeHandler(grab)
        log.setLevel(level)
    assert seen == ["a warning that matters"]


@pytest.mark.skipif(shutil.which("ss") is None, reason="needs ss (iproute2) to list listening sockets")
def test_the_test_suites_own_ray_fixture_listens_on_loopback_only(ray_local):
    found = ray_listeners(session_dir(ray_local))
    assert len(found) >= 3  # GCS, raylet, this process's core worker at least
    exposed = beyond_loopback(found)
    assert not exposed, f"the suite's Ray listens beyond loopback: {exposed}"
