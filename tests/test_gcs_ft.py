"""Ray GCS fault tolerance with an external Redis (Ray 2.60, `ray start`): kill the head's `gcs_server`,
start it again as a supervisor would (KubeRay, systemd), and the detached actor created before the crash
is still there, with its state, in the same process.

Ray itself never restarts a dead GCS, and `ray start --block` kills the whole node when one of its
processes dies unexpectedly, so the head runs without `--block` in its own session and `--temp-dir`; the
test plays the supervisor by re-running the GCS's own command line. Teardown kills only the processes of
that session (and the restarted GCS) by id: never `ray stop`, which would stop every Ray on the machine.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest
import ray  # noqa: F401  (puts Ray's vendored psutil on sys.path)
import redis
from ray_head import driver_result, listening
from redis_server import RedisServer, free_port

NAMESPACE = "posisp-gcs-ft"

DRIVER = """
import json, os, sys, ray
ray.init(address=sys.argv[1], namespace="posisp-gcs-ft", log_to_driver=False)
if sys.argv[2] == "create":
    @ray.remote(num_cpus=0, lifetime="detached", name="ft-counter", max_restarts=0)
    class Counter:
        def __init__(self):
            self.n = 0
        def incr(self):
            self.n += 1
            return self.n, os.getpid()
    counter = Counter.remote()
else:
    counter = ray.get_actor("ft-counter")
n, pid = ray.get(counter.incr.remote(), timeout=60)
alive = sum(node["Alive"] for node in ray.nodes())
print("POSISP-RESULT", json.dumps({"n": n, "pid": pid, "alive_nodes": alive}))
"""


def wait_for(cond, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.25)
    raise TimeoutError(f"{what} not within {timeout_s} s")


class FTHead:
    """A `ray start --head` (no --block) whose GCS stores its tables in an external Redis."""

    def __init__(self, redis_port: int) -> None:
        from ray.util import get_node_ip_address

        self.port = free_port()
        self.host = get_node_ip_address()  # Ray 2.60 rewrites 127.0.0.1 in a driver's address into this node's IP
        self.address = f"{self.host}:{self.port}"
        self.temp_dir = Path(tempfile.mkdtemp(prefix="gft", dir="/tmp"))  # short: Unix socket paths are capped
        self.storage_ns = f"{NAMESPACE}-{uuid.uuid4().hex[:8]}"
        self.env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
        # explicit, so head and drivers agree whether or not a ~/.ray/auth_token exists on this machine
        self.env["RAY_AUTH_MODE"] = "disabled"
        self.env.update(RAY_REDIS_ADDRESS=f"127.0.0.1:{redis_port}", RAY_external_storage_namespace=self.storage_ns)
        self.session: int | None = None  # id of the session all head processes live in
        self.extra: list[subprocess.Popen] = []  # processes this test started outside it (the restarted GCS)

    def start(self) -> None:
        ports = [
            "--ray-client-server-port",
            "--dashboard-agent-listen-port",
            "--dashboard-agent-grpc-port",
            "--runtime-env-agent-port",
            "--metrics-export-port",
            "--node-manager-port",
            "--object-manager-port",
        ]
        cmd = ["ray", "start", "--head", "--disable-usage-stats", "--node-ip-address", self.host,
               "--port", str(self.port), "--num-cpus", "1", "--object-store-memory", str(100 * 2**20),
               "--temp-dir", str(self.temp_dir), "--include-dashboard", "false"]  # fmt: skip
        for flag in ports:
            cmd += [flag, str(free_port())]
        proc = subprocess.Popen(cmd, env=self.env, start_new_session=True, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)  # fmt: skip
        self.session = proc.pid
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0, out[-3000:]

    def processes(self) -> list:
        import psutil

        mine = []
        for p in psutil.process_iter(["pid"]):
            try:
                if os.getsid(p.pid) == self.session:
                    mine.append(p)
            except (ProcessLookupError, PermissionError):
                pass
        return mine + [psutil.Process(e.pid) for e in self.extra if e.poll() is None]

    def gcs_server(self):
        found = [p for p in self.processes() if p.name() == "gcs_server"]
        assert len(found) == 1, found
        return found[0]

    def driver(self, mode: str) -> dict:
        env = {k: v for k, v in self.env.items() if k not in ("RAY_REDIS_ADDRESS", "RAY_external_storage_namespace")}
        out = subprocess.run([sys.executable, "-c", DRIVER, self.address, mode], env=env, capture_output=True,
                             text=True, timeout=120)  # fmt: skip
        assert out.returncode == 0, out.stderr[-3000:]
        return driver_result(out.stdout)

    def stop(self) -> None:
        import psutil

        procs = self.processes() if self.session else []
        for p in procs:
            try:
                p.send_signal(signal.SIGKILL)
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(procs, timeout=10)
        for e in self.extra:
            e.wait(timeout=10)
        shutil.rmtree(self.temp_dir, ignore_errors=True)


@pytest.fixture
def ft_head(tmp_path):
    server = RedisServer(tmp_path)
    head = FTHead(server.port)
    try:
        head.start()
        yield head, server
    finally:
        head.stop()
        server.kill()


@pytest.mark.slow
def test_a_killed_gcs_restarts_from_redis_and_the_detached_actor_survives(ft_head):
    head, server = ft_head
    before = head.driver("create")
    assert before["n"] == 1 and before["alive_nodes"] == 1
    keys = redis.Redis(port=server.port).keys(f"*{head.storage_ns}*")
    assert keys, "the GCS wrote no tables to the external Redis"

    gcs = head.gcs_server()
    cmdline, cwd = gcs.cmdline(), gcs.cwd()
    gcs.send_signal(signal.SIGKILL)  # a crash, not a graceful stop
    gcs.wait(timeout=10)
    assert not listening(head.host, head.port)

    # the supervisor's part: the same binary and arguments (the GCS port is one of them)
    restarted = subprocess.Popen(cmdline, cwd=cwd, env=head.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    head.extra.append(restarted)  # it logs under the session's log_dir, like the first one
    wait_for(lambda: listening(head.host, head.port), 30, "restarted GCS listening")

    after = head.driver("lookup")
    assert after["pid"] == before["pid"]  # the same actor process, found through the restarted GCS
    assert after["n"] == 2  # its state survived: it was never recreated
    assert after["alive_nodes"] == 1  # the raylet re-registered with the new GCS
