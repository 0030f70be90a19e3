"""How EnvRunners get their data shards and task-model weights: `data.transport`.

`filesystem` (the default) has every EnvRunner read `data.root` and `task.cache_dir` on its own node: right on
one machine or a cluster with a shared disk. `object_store` needs no shared disk: the driver reads each shard's
Parquet file and the task-model weights once, `ray.put`s the bytes and hands the `ObjectRef`s to the EnvRunners
in `env_config` (a `Shipment`); each runner fetches only its own shards (Ray copies them to its node) and
decodes them in memory with pyarrow. The driver owns the objects, so an EnvRunner that Ray restarts on any node
fetches them again; they live as long as the driver's algorithm config holds the shipment.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from posisp_dist.config import Config, TaskConfig
from posisp_dist.data.shards import RawBatch, RawDataset, concat, read_shard_bytes
from posisp_dist.tasks.base import TaskModel

TRANSPORTS = ("filesystem", "object_store")


def _put_file(path: Path) -> Any:
    """A file's bytes in the object store, as a uint8 array so that readers on the same node get it zero-copy."""
    import ray

    return ray.put(np.frombuffer(path.read_bytes(), np.uint8))


@dataclass(frozen=True)
class Shipment:
    """Object-store handles to a run's shards (per split) and task weights, plus the dataset manifest."""

    manifest: dict[str, Any]
    shards: dict[str, tuple[Any, ...]]  # split -> one ObjectRef per shard, in shard order
    weights: Any = None  # ObjectRef of the task model's weights file, None for weight-less tasks
    names: dict[str, tuple[str, ...]] = field(default_factory=dict)  # split -> shard file names, for messages

    def __deepcopy__(self, memo: dict[int, Any]) -> Shipment:
        return self  # RLlib deep-copies its config on every EnvRunner; object refs are immutable handles

    @property
    def classes(self) -> list[str]:
        return list(self.manifest["classes"])

    def num_shards(self, split: str) -> int:
        if split not in self.shards:
            raise KeyError(f"split {split!r} was not shipped (shipped: {sorted(self.shards)})")
        return len(self.shards[split])

    def load(self, split: str, shards: Sequence[int], limit: int | None = None) -> RawBatch:
        """This worker's shards, fetched from the object store and decoded; never touches `data.root`."""
        import ray

        self.num_shards(split)  # a clear error for a split that was not shipped
        blobs = ray.get([self.shards[split][i] for i in shards])
        names = self.names.get(split) or tuple(str(i) for i in range(self.num_shards(split)))
        pairs = zip(shards, blobs, strict=True)
        batch = concat([read_shard_bytes(b, f"{split}/{names[i]} (object store)") for i, b in pairs])
        return batch.take(np.arange(min(limit, len(batch)))) if limit else batch

    def task_model(self, cfg: TaskConfig, device: str | None = None) -> TaskModel:
        """The frozen task model from the shipped weights; never touches `task.cache_dir`."""
        import ray

        from posisp_dist.tasks import task_model_from_weights

        weights = None if self.weights is None else ray.get(self.weights)
        return task_model_from_weights(cfg, self.classes, weights, device)


def ship(cfg: Config, splits: Sequence[str] = ("train",)) -> Shipment:
    """Driver side: put the shards of `splits` and the task weights into the object store (Ray must be up).

    Run after the dataset and task model exist (the driver's `_prepare`)."""
    from posisp_dist.tasks import task_weights_path

    datasets = {split: RawDataset(cfg.data.root, split) for split in splits}
    manifest = next(iter(datasets.values())).manifest
    shards = {s: tuple(_put_file(Path(p)) for p in d.shard_paths) for s, d in datasets.items()}
    names = {s: tuple(Path(p).name for p in d.shard_paths) for s, d in datasets.items()}
    path = task_weights_path(cfg.task, cfg.data.root)
    weights = None if path is None else _put_file(path)
    return Shipment(manifest, shards, weights, names)
