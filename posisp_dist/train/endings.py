"""How a training run ends when its data cannot be read (signals: `runs/signals.py`).

The driver reads every shard before Ray starts (`driver._prepare`), so a corrupt file normally stops the run
there, named in one line. A shard can still fail inside a remote EnvRunner: it changed after that check, or the
runner's node holds another copy of the data. Such an error cannot reach the driver as an exception: RLlib 2.60's
fault tolerance logs and ignores every error of a remote EnvRunner, and the runner's `apply` exits its process on
any exception, so Ray restarts it and it trains on without its shards (and its metrics of that round are dropped
when no runner delivered episodes). So the EnvRunner posts the error to the run's `DataErrorMailbox` (a public
`ray.util.queue.Queue`) and ends itself (`envs.factory.end_actor_on_data_error`); the driver reads the mailbox
after every `algo.train()` and fails the run naming the file, before that iteration, trained on part of the data,
is checkpointed. An EnvRunner whose process died (RayActorError) posts nothing and restarts as before.
"""

from __future__ import annotations

from typing import Any

from posisp_dist.data.shards import DataError


class DataErrorMailbox:
    """Data errors posted by remote EnvRunners for the driver: (worker index, message), in arrival order.

    Handed to the EnvRunners in the env config; owned by the driver (the queue actor needs no CPU)."""

    def __init__(self) -> None:
        from ray.util.queue import Queue

        self.queue = Queue(actor_options={"num_cpus": 0})

    def __deepcopy__(self, memo: dict[int, Any]) -> DataErrorMailbox:
        return self  # RLlib deep-copies its config for every EnvRunner: all of them post to the one queue

    def post(self, worker_index: int, message: str) -> None:
        self.queue.put((int(worker_index), str(message)))

    def drain(self) -> list[tuple[int, str]]:
        n = self.queue.qsize()
        return list(self.queue.get_nowait_batch(n)) if n else []

    def close(self) -> None:
        self.queue.shutdown()


def data_error_of(exc: Any) -> DataError | None:
    """The `DataError` that `exc` carries, if any: `exc` itself, the cause of a Ray task error (`.cause`) or an
    exception it was raised from or during."""
    seen: set[int] = set()
    while isinstance(exc, BaseException) and id(exc) not in seen:
        seen.add(id(exc))
        cause = getattr(exc, "cause", None)  # ray.exceptions.RayTaskError keeps the remote exception here
        if isinstance(cause, DataError):
            return cause
        if isinstance(exc, DataError):
            return exc
        exc = cause if isinstance(cause, BaseException) else (exc.__cause__ or exc.__context__)
    return None


class EnvRunnerDataErrors:
    """A run's data errors: its EnvRunners' mailbox (None when the driver samples itself) and the exceptions of
    `algo.train()`. `train(algo)` runs one iteration and raises a `DataError` naming the first bad file."""

    def __init__(self, remote_env_runners: bool) -> None:
        self.mailbox = DataErrorMailbox() if remote_env_runners else None

    def train(self, algo: Any) -> dict[str, Any]:
        try:
            result = algo.train()
        except Exception as exc:  # e.g. no samples at all once every runner ended: the data error says why
            self.raise_if_any(exc)
            raise
        self.raise_if_any()
        return result

    def raise_if_any(self, during: BaseException | None = None) -> None:
        """Raise a `DataError` naming the first bad file, when an EnvRunner posted one or `during` carries one."""
        posted = self.mailbox.drain() if self.mailbox is not None else []
        if posted:
            worker, message = posted[0]
            where = f"EnvRunner {worker}"
        else:
            err = data_error_of(during)
            if err is None:
                return
            where, message = "an EnvRunner", str(err)
        raise DataError(
            f"{where} cannot read its training data, so the run stops (a restart would read the same file): {message}"
        ) from during

    def close(self) -> None:
        if self.mailbox is not None:
            self.mailbox.close()
