"""A real `ray start --head --block` for tests, on free ports (dashboard on loopback), stopped by process id.

Never `ray stop`: it kills every Ray process of the user on the machine, other runs included. The head runs
with `--block` in its own session and its own `--temp-dir`, so `ray.init()` elsewhere does not auto-join it;
teardown signals that process tree (snapshotted before the first signal) and nothing else.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import ray  # noqa: F401  (puts Ray's vendored psutil on sys.path)

from posisp_dist.ray_private import LOCAL_ONLY_ENV

OBJECT_STORE_BYTES = 150 * 1024 * 1024  # each raylet's plasma store; Ray's default is 30 % of RAM
# Ray 2.60 turns token auth on for `ray start` when ~/.ray/auth_token exists (left by any earlier local
# ray.init), but a driver given an explicit address only uses it with RAY_AUTH_MODE=token: pin the mode so the
# tests behave the same on every machine. Clients of the head (drivers, job CLI) get the same variable.
CLIENT_ENV = {"RAY_AUTH_MODE": "disabled"}


def cluster_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """This process's environment for a cluster process or a driver joining one: no RAY_ADDRESS, and not Ray's
    local-only node mode (a local Ray of this process sets it only while it starts, but a user may export it)."""
    drop = {"RAY_ADDRESS", LOCAL_ONLY_ENV}
    return {**{k: v for k, v in os.environ.items() if k not in drop}, **CLIENT_ENV, **(extra or {})}


RESULT = "POSISP-RESULT "  # a driver prints its answer after this tag; Ray may print more lines after it


def driver_result(stdout: str) -> dict:
    """The JSON a test driver printed after `RESULT`. Ray interleaves its own lines on the driver's stdout
    (e.g. the autoscaler's `(autoscaler +9s) Resized to 2 CPUs.`), so the last line is not always ours."""
    import json

    tagged = [line[len(RESULT) :] for line in stdout.splitlines() if line.startswith(RESULT)]
    assert len(tagged) == 1, f"expected one {RESULT!r} line in the driver's stdout:\n{stdout[-3000:]}"
    return json.loads(tagged[0])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))  # free on every interface
        return s.getsockname()[1]


def listening(host: str, port: int) -> bool:
    """True when something accepts TCP connections at host:port."""
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def _dashboard_up(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/api/version", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


class RayHead:
    """One head node. `address` is the GCS address (for ray.init / RAY_ADDRESS), `dashboard_url` the jobs API."""

    def __init__(self, num_cpus: int, dashboard: bool = True, autoscaling_config: Path | None = None) -> None:
        from ray.util import get_node_ip_address

        # Ray 2.60 rewrites 127.0.0.1 in any address a driver connects to into this node's IP
        # (`resolve_ip_for_localhost`), so a head bound to loopback is unreachable: use the node IP Ray picks.
        self.host = get_node_ip_address()
        self.port, self.dashboard_port = free_port(), free_port()
        self.address = f"{self.host}:{self.port}"
        self.dashboard_url = f"http://127.0.0.1:{self.dashboard_port}" if dashboard else None
        self.temp_dir = Path(tempfile.mkdtemp(prefix="rh", dir="/tmp"))  # short: Unix socket paths are capped
        self.log = self.temp_dir / "ray_start.log"
        self.cmd = [
            "ray", "start", "--head", "--block", "--disable-usage-stats",
            "--node-ip-address", self.host, "--port", str(self.port), "--num-cpus", str(num_cpus),
            "--temp-dir", str(self.temp_dir), "--object-store-memory", str(OBJECT_STORE_BYTES),
            "--ray-client-server-port", str(free_port()), "--dashboard-agent-listen-port", str(free_port()),
            "--dashboard-agent-grpc-port", str(free_port()), "--runtime-env-agent-port", str(free_port()),
            "--metrics-export-port", str(free_port()),
            "--include-dashboard", "true" if dashboard else "false",
        ]  # fmt: skip
        if dashboard:
            self.cmd += ["--dashboard-host", "127.0.0.1", "--dashboard-port", str(self.dashboard_port)]
        if autoscaling_config is not None:
            self.cmd += ["--autoscaling-config", str(autoscaling_config)]
        self.proc: subprocess.Popen | None = None

    def start(self, env: dict[str, str] | None = None, timeout_s: float = 90) -> RayHead:
        """Start and wait until the GCS (and the dashboard's jobs API) answer; raise with the log otherwise."""
        full_env = cluster_env(env)
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                self.cmd, stdout=out, stderr=subprocess.STDOUT, env=full_env, start_new_session=True
            )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ray start exited with {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
            if listening(self.host, self.port) and (self.dashboard_url is None or _dashboard_up(self.dashboard_url)):
                return self
            time.sleep(0.5)
        self.stop()
        raise TimeoutError(f"Ray head not up after {timeout_s} s:\n{self.log.read_text()[-3000:]}")

    def stop(self, grace_s: float = 15) -> None:
        """SIGTERM the head (it kills its own children), then SIGKILL whatever of its process tree remains."""
        if self.proc is None or self.proc.poll() is not None:
            return
        import psutil  # Ray's vendored copy, on sys.path once ray is imported

        try:
            tree = [psutil.Process(self.proc.pid), *psutil.Process(self.proc.pid).children(recursive=True)]
        except psutil.NoSuchProcess:
            tree = []
        self.proc.send_signal(signal.SIGTERM)
        _, alive = psutil.wait_procs(tree, timeout=grace_s)
        for p in alive:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(alive, timeout=5)
        self.proc.wait(timeout=5)
