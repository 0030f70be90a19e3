"""One driver per run: an exclusive lock beside the run's checkpoints, held for as long as a driver trains it.

The lock is `flock` on `<out_dir>/<run_id>/driver.lock`: the operating system releases it when the holding
process ends, however it ends (a crash or `kill -9` included), so a later driver takes the run over without a
stale lease to clear. The file names the holder (pid, host, since when) for the refusal message.
"""

from __future__ import annotations

import fcntl
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

LEASE_FILE = "driver.lock"


class RunInUse(ValueError):
    """Another live driver is training this run."""


@contextmanager
def run_lease(run_dir: str | Path, run_id: str) -> Iterator[Path]:
    """Hold the run's driver lock for the body; RunInUse naming the holder when another driver has it."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / LEASE_FILE
    handle = open(path, "a+")  # noqa: SIM115 (held open for the lease's lifetime)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "a driver that has not named itself yet"
        handle.close()
        raise RunInUse(f"run {run_id} is being trained by another driver ({holder}); wait for it to end or stop "
                       "it, then resume") from None
    try:
        handle.seek(0)
        handle.truncate()
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime())
        handle.write(f"pid {os.getpid()} on {socket.gethostname()} since {stamp}\n")
        handle.flush()
        yield path
    finally:
        handle.truncate(0)
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()
