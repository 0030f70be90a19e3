"""Environments built from an experiment config, the way RLlib's EnvRunners make them.

`CoreSource` defers loading images and the task model to the first `reset`, so an env is cheap to build
(the driver only needs its spaces) and the EnvRunner can first tell it which worker it is: worker k of n
reads data shards k, k+n, ... (`RawDataset.shards_for_worker`). RLlib hands vector entry points a plain
dict without `worker_index`, so the `on_environment_created` callback binds it (`bind_worker`). With
`data.transport: object_store` the env config also carries the driver's `Shipment`, and the shards and task
weights come from Ray's object store instead of the disk (`posisp_dist/data/transport.py`). With remote EnvRunners
it carries the run's data-error mailbox too: an EnvRunner that cannot read its shards posts the error there and
ends (`end_actor_on_data_error`, `posisp_dist/train/endings.py`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import gymnasium as gym

from envs.core import ISPTaskCore
from envs.sequence_isp import SequenceISPEnv, SequenceISPVectorEnv
from envs.stepwise_isp import StepwiseISPEnv, StepwiseISPVectorEnv
from posisp_dist.config import Config
from posisp_dist.isp.catalogue import registry_for
from posisp_dist.isp.registry import Registry

RLLIB_ENV_ID = "posisp-sequence-isp"


class CoreSource:
    """This worker's `ISPTaskCore`, made on first `get()` from the config and the bound worker index."""

    def __init__(
        self,
        cfg: Config,
        split: str = "train",
        xp: Any = None,
        device: str | None = None,
        shipment: Any = None,
        data_errors: Any = None,
    ) -> None:
        self.cfg, self.split, self.xp, self.device = cfg, split, xp, device
        self.shipment = shipment  # a data.transport.Shipment: shards and weights from the object store, not disk
        self.data_errors = data_errors  # the driver's mailbox for data errors (`.post(worker_index, message)`)
        self.registry: Registry = registry_for(cfg.isp.modules)
        self.preview_size = cfg.env.preview_size
        self.worker_index, self.num_workers = 0, 1
        self._core: ISPTaskCore | None = None

    def bind_worker(self, worker_index: int | None, num_workers: int | None) -> None:
        """RLlib numbering: worker 0 is the driver's local runner, 1..n the remote EnvRunners."""
        if self._core is not None and (worker_index, num_workers) != (self.worker_index, self.num_workers):
            raise RuntimeError("bind_worker must be called before the environment's first reset")
        self.worker_index, self.num_workers = int(worker_index or 0), int(num_workers or 0)

    def shards(self) -> list[int]:
        from posisp_dist.data.shards import RawDataset, assign_shards

        if self.shipment is not None:
            n = self.shipment.num_shards(self.split)
        else:
            n = len(RawDataset(self.cfg.data.root, self.split).shard_paths)
        if self.num_workers <= 0:  # local sampling: the driver's runner reads everything
            return assign_shards(n, 0, 1)
        return assign_shards(n, max(self.worker_index - 1, 0), self.num_workers)

    def get(self) -> ISPTaskCore:
        if self._core is None:
            from posisp_dist.cache import open_cache, reference_namespace
            from posisp_dist.data.shards import DataError, RawDataset
            from posisp_dist.isp.xp import get_xp
            from posisp_dist.tasks import load_task_model

            cfg = self.cfg
            xp = self.xp or get_xp(cfg.isp.backend)
            device = self.device or ("cuda" if xp.__name__ == "cupy" else "cpu")
            try:
                if self.shipment is not None:  # object_store transport: reads neither data.root nor task.cache_dir
                    fingerprint = str(self.shipment.manifest["fingerprint"])
                    batch = self.shipment.load(self.split, self.shards(), limit=cfg.env.max_images)
                else:
                    dataset = RawDataset(cfg.data.root, self.split)
                    fingerprint = dataset.fingerprint
                    batch = dataset.load(self.shards(), limit=cfg.env.max_images)
            except DataError as err:
                end_actor_on_data_error(err, self.data_errors, self.worker_index)  # in an EnvRunner: ends it
                raise
            if self.shipment is not None:
                task = self.shipment.task_model(cfg.task, device=device)
            else:
                task = load_task_model(cfg.task, cfg.data.root, progress=False, device=device)
            ns = reference_namespace(fingerprint, self.split, task)  # shared across runners and jobs
            env = cfg.env
            args = (env.preview_size, env.cost_lambda, env.brightness_penalty, open_cache(cfg.cache), ns)
            self._core = ISPTaskCore(
                batch, task, self.registry, xp, *args, kernels=cfg.isp.kernels,
                pathwise_backward=cfg.policy.pathwise_backward, pathwise_fraction=cfg.policy.pathwise_fraction,
                seed=[cfg.seed, self.worker_index],
            )
        return self._core


def end_actor_on_data_error(err: Exception, mailbox: Any, worker_index: int) -> None:
    """Inside a Ray actor (a remote EnvRunner) given the run's `mailbox`: post `err` for the driver, then end the
    actor for good with Ray's public `ray.actor.exit_actor()`, an intended exit that Ray does not restart (a
    restart would read the same bad file). Raised out of `sample()`, the error would only reach RLlib 2.60's fault
    tolerance, which logs it, restarts the runner and trains on without its shards. Elsewhere (the driver's own
    runner, no mailbox) it returns and the caller raises."""
    if mailbox is None:
        return
    import ray

    if not ray.is_initialized() or ray.get_runtime_context().get_actor_id() is None:
        return
    mailbox.post(worker_index, str(err))  # delivered before the actor ends (a failure here raises instead)
    ray.actor.exit_actor()


@dataclass(frozen=True)
class EnvKind:
    """One `env.kind`: its single and vector env classes (both built as `(source, [num_envs,] *args(cfg))`),
    how many env steps one drawn image takes at most (one action = one whole pipeline: 1, or K with K pipelines
    per image), the steps of its policy's greedy rollout (None: one pipeline per image, decoded at once), and the
    vector env's own keyword arguments (the sequence env's K pipelines per image)."""

    single: type[gym.Env]
    vector: type[gym.vector.VectorEnv]
    args: Callable[[Config], tuple[Any, ...]]
    steps_per_image: Callable[[Config], int]
    greedy_steps: Callable[[Config], int | None]
    vector_kwargs: Callable[[Config], dict[str, Any]] = lambda c: {}


def _pathwise(cfg: Config) -> bool:
    return cfg.policy.param_learning == "pathwise"


ENV_KINDS: dict[str, EnvKind] = {
    "sequence": EnvKind(
        SequenceISPEnv, SequenceISPVectorEnv, lambda c: (c.isp.max_len, _pathwise(c)),
        lambda c: c.env.pipelines_per_image, lambda c: None,
        lambda c: {"pipelines_per_image": c.env.pipelines_per_image},
    ),
    "stepwise": EnvKind(
        StepwiseISPEnv,
        StepwiseISPVectorEnv,
        lambda c: (c.env.max_steps, c.env.reuse_penalty, c.env.all_modules_per_step, _pathwise(c)),
        lambda c: c.env.max_steps,
        lambda c: c.env.max_steps,
    ),
}


def env_kind(cfg: Config) -> EnvKind:
    return ENV_KINDS[cfg.env.kind]


def make_env(env_config: dict[str, Any]) -> gym.Env:
    """RLlib env creator: `{"config": Config dump[, "num_envs": n][, "shipment": Shipment][, "data_errors":
    mailbox]}` -> single env or batched vector env of the config's `env.kind`."""
    cfg = Config.model_validate(env_config["config"])
    source = CoreSource(
        cfg, env_config.get("split", "train"), shipment=env_config.get("shipment"),
        data_errors=env_config.get("data_errors"),
    )
    if hasattr(env_config, "worker_index"):  # an RLlib EnvContext (single-env path)
        source.bind_worker(env_config.worker_index, env_config.num_workers)
    kind = env_kind(cfg)
    if "num_envs" in env_config:
        return kind.vector(source, int(env_config["num_envs"]), *kind.args(cfg), **kind.vector_kwargs(cfg))
    return kind.single(source, *kind.args(cfg))
