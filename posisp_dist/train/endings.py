"""How a training run ends when something outside the loop stops it: a signal, or a data error in an EnvRunner.

- SIGTERM (`timeout`, a stopped batch job, `ray job stop`) and SIGINT raise `Interrupted`, a KeyboardInterrupt, in
  the driver's main thread, so the tracker ends the MLflow run KILLED with the signal as its reason. `ray.init`
  installs its own SIGTERM handler (`sys.exit`); the driver installs ours again after it.
- A `DataError` (a corrupt shard) raised inside a remote EnvRunner is logged and then ignored by RLlib's fault
  tolerance, which re-probes the runner and leaves its shards out of training. `EnvRunnerDataErrors` collects it
  from that log record (RLlib 2.60's actor manager logs every remote error it ignores), so the driver fails the
  run naming the file. An EnvRunner whose process died (RayActorError) is no data error: it restarts as before.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from posisp_dist.data.shards import DataError

ACTOR_MANAGER_LOGGER = "ray.rllib.utils.actor_manager"  # where RLlib logs the remote errors it ignores
SIGNALS = (signal.SIGTERM, signal.SIGINT)


_received: list[int] = []  # signals received inside `signals_end_the_run`, newest last


def received_signal() -> int | None:
    """The last signal that `signals_end_the_run` turned into `Interrupted`, if any."""
    return _received[-1] if _received else None


def as_interrupted(exc: KeyboardInterrupt) -> KeyboardInterrupt:
    """`exc` with the signal that caused it: libraries (Ray's `get`, RLlib's actor manager) may raise a plain
    KeyboardInterrupt anew while handling ours, which would lose which signal ended the run."""
    if isinstance(exc, Interrupted) or not _received:
        return exc
    return Interrupted(_received[-1])


class Interrupted(KeyboardInterrupt):
    """The driver was told to stop by a signal; `signum` says which (the exit code is 128 + signum)."""

    def __init__(self, signum: int) -> None:
        self.signum = int(signum)
        super().__init__(f"stopped by {signal.Signals(signum).name}")


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

    def handler(signum: int, frame: Any) -> None:
        if stopping and signum == signal.SIGTERM:
            return  # already ending the run (KILLED): let the clean-up finish
        stopping.append(signum)
        _received.append(signum)
        raise Interrupted(signum)

    def install() -> None:
        for s in SIGNALS:
            signal.signal(s, handler)

    install()
    try:
        yield install
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def data_error_of(exc: Any) -> DataError | None:
    """The `DataError` that `exc` carries, if any: an EnvRunner that a data error ended (its exit message, see
    `envs.factory.end_actor_on_data_error`), a Ray task error from a remote actor, or any exception chain."""
    from envs.factory import DATA_ERROR_EXIT

    seen: set[int] = set()
    while isinstance(exc, BaseException) and id(exc) not in seen:
        seen.add(id(exc))
        text = str(exc)
        if DATA_ERROR_EXIT in text:  # the message runs to the end of its line
            return DataError(text.split(DATA_ERROR_EXIT, 1)[1].splitlines()[0].strip())
        if isinstance(exc, DataError) and not hasattr(exc, "cause"):
            return exc
        cause = getattr(exc, "cause", None)  # ray.exceptions.RayTaskError keeps the remote exception here
        if isinstance(cause, DataError):
            return cause
        exc = cause if isinstance(cause, BaseException) else (exc.__cause__ or exc.__context__)
    return None


class EnvRunnerDataErrors(logging.Handler):
    """Collects the `DataError`s of remote EnvRunners that RLlib logs and ignores, while used as a context."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.errors: list[DataError] = []

    def emit(self, record: logging.LogRecord) -> None:
        for exc in (record.msg, record.exc_info[1] if record.exc_info else None):
            err = data_error_of(exc)
            if err is not None:
                self.errors.append(err)
                return

    def __enter__(self) -> EnvRunnerDataErrors:
        logging.getLogger(ACTOR_MANAGER_LOGGER).addHandler(self)
        return self

    def __exit__(self, *exc_info: Any) -> None:
        logging.getLogger(ACTOR_MANAGER_LOGGER).removeHandler(self)

    def raise_if_any(self, during: BaseException | None = None) -> None:
        """Raise a `DataError` naming the first bad file, when any EnvRunner reported one."""
        if self.errors:
            raise DataError(
                f"an EnvRunner cannot read its training data, so the run stops (a restart would read the same "
                f"file): {self.errors[0]}"
            ) from during
