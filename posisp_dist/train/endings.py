"""How a training run ends when a data error in an EnvRunner stops it (signals: `runs/signals.py`).

A `DataError` (a corrupt shard) raised inside a remote EnvRunner is logged and then ignored by RLlib's fault
tolerance, which re-probes the runner and leaves its shards out of training. `EnvRunnerDataErrors` collects it
from that log record (RLlib 2.60's actor manager logs every remote error it ignores), so the driver fails the
run naming the file. An EnvRunner whose process died (RayActorError) is no data error: it restarts as before.
"""

from __future__ import annotations

import logging
from typing import Any

from posisp_dist.data.shards import DataError

ACTOR_MANAGER_LOGGER = "ray.rllib.utils.actor_manager"  # where RLlib logs the remote errors it ignores


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
