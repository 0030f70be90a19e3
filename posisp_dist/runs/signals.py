"""SIGTERM and SIGINT end a training run KILLED, and never in the middle of a write to the tracking store.

SIGTERM (`timeout`, a stopped batch job, `ray job stop`) and SIGINT raise `Interrupted`, a KeyboardInterrupt, in
the driver's main thread, so the tracker ends the MLflow run KILLED with the signal as its reason. `ray.init`
installs its own SIGTERM handler (`sys.exit`); the driver installs ours again after it.

A signal that arrives inside `uninterrupted()` (every call the tracker makes to its store) is raised when that
block ends: a KeyboardInterrupt inside SQLAlchemy's transaction skips its rollback and leaves a sqlite store
locked, so the run could no longer be marked KILLED (measured: 9 of 40 runs interrupted at random while logging).
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

SIGNALS = (signal.SIGTERM, signal.SIGINT)

_received: list[int] = []  # signals received inside `signals_end_the_run`, newest last
_pending: list[int] = []  # of those, the ones held back until the `uninterrupted` block ends
_depth = [0]  # how many `uninterrupted` blocks the main thread is inside


class Interrupted(KeyboardInterrupt):
    """The driver was told to stop by a signal; `signum` says which (the exit code is 128 + signum)."""

    def __init__(self, signum: int) -> None:
        self.signum = int(signum)
        super().__init__(f"stopped by {signal.Signals(signum).name}")


def received_signal() -> int | None:
    """The last signal that `signals_end_the_run` turned into `Interrupted`, if any."""
    return _received[-1] if _received else None


def as_interrupted(exc: KeyboardInterrupt) -> KeyboardInterrupt:
    """`exc` with the signal that caused it: libraries (Ray's `get`, RLlib's actor manager) may raise a plain
    KeyboardInterrupt anew while handling ours, which would lose which signal ended the run."""
    if isinstance(exc, Interrupted) or not _received:
        return exc
    return Interrupted(_received[-1])


@contextmanager
def uninterrupted() -> Iterator[None]:
    """Runs the block whole: a signal that `signals_end_the_run` catches inside it is raised when it ends."""
    if threading.current_thread() is not threading.main_thread():  # handlers run in the main thread only
        yield
        return
    _depth[0] += 1
    try:
        yield
    finally:
        _depth[0] -= 1
        if not _depth[0] and _pending:  # also when the block failed: the stop outranks its error (kept as context)
            signum = _pending[-1]
            _pending.clear()
            raise Interrupted(signum)


@contextmanager
def signals_end_the_run() -> Iterator[Callable[[], None]]:
    """SIGTERM and SIGINT raise `Interrupted` while inside; yields a function that installs the handlers again
    (call it after `ray.init`). A repeated SIGTERM during the clean-up is ignored; a second SIGINT interrupts it.
    Outside the main thread (where Python allows no handlers) it does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield lambda: None
        return
    previous = {s: signal.getsignal(s) for s in SIGNALS}
    stopping: list[int] = []
    _received.clear()
    _pending.clear()

    def handler(signum: int, frame: Any) -> None:
        if stopping and signum == signal.SIGTERM:
            return  # already ending the run (KILLED): let the clean-up finish
        stopping.append(signum)
        _received.append(signum)
        if _depth[0]:
            _pending.append(signum)  # raised when the store call in progress has finished
            return
        raise Interrupted(signum)

    def install() -> None:
        for s in SIGNALS:
            signal.signal(s, handler)

    install()
    try:
        yield install
    finally:
        _pending.clear()
        for s, h in previous.items():
            signal.signal(s, h)
