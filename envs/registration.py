"""Entry points of the registered ids, so that `gymnasium.make` builds them as Gymnasium users do.

`gymnasium.make("posisp/SequenceISP-v0")` with no arguments builds the env on the built-in quick config
(`configs/quick.yaml` defaults): the dataset and the task model are made (or reused) lazily at the first reset, not
at construction. `config=` takes a `Config`, a mapping of its fields or a YAML path; `split=` picks the data split.
The made env holds only the config (plain data), so Gymnasium can copy its spec and `check_env` passes as made.
An explicit `core=` (an `ISPTaskCore` or `CoreSource`) is still accepted for code that built one itself.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from posisp_dist.config import Config, load_config


def _config(config: Config | Mapping[str, Any] | str | Path | None) -> Config:
    if config is None:
        return Config()
    if isinstance(config, Config):
        return config
    if isinstance(config, str | Path):
        return load_config(config)
    if isinstance(config, Mapping):
        return Config.model_validate(dict(config))
    raise TypeError(f"config must be a Config, a mapping or a YAML path, got {type(config).__name__}")


class PreparedSource:
    """A `CoreSource` whose first `get()` first builds (or reuses) the dataset and the task model of its config."""

    def __init__(self, cfg: Config, split: str) -> None:
        from envs.factory import CoreSource

        self._inner = CoreSource(cfg, split)
        self.preview_size, self.registry = self._inner.preview_size, self._inner.registry

    def bind_worker(self, worker_index: int | None, num_workers: int | None) -> None:
        self._inner.bind_worker(worker_index, num_workers)

    def get(self) -> Any:
        if self._inner._core is None:
            from posisp_dist.data.build import build_dataset
            from posisp_dist.tasks import load_task_model

            cfg = self._inner.cfg
            build_dataset(cfg.data, cfg.seed, progress=False)
            load_task_model(cfg.task, cfg.data.root, progress=False, device="cpu")
        return self._inner.get()

    def __getattr__(self, name: str) -> Any:  # shards(), cfg, split, ... of the wrapped source
        return getattr(self.__dict__["_inner"], name)


def sequence_env(config: Any = None, split: str = "train", core: Any = None, **kwargs: Any) -> Any:
    """`posisp/SequenceISP-v0`: one action = the whole pipeline (see `envs.sequence_isp.SequenceISPEnv`)."""
    from envs.sequence_isp import SequenceISPEnv

    if core is None:
        cfg = _config(config)
        core, kwargs = PreparedSource(cfg, split), {"max_len": cfg.isp.max_len, **kwargs}
    return SequenceISPEnv(core, **kwargs)


def stepwise_env(config: Any = None, split: str = "train", core: Any = None, **kwargs: Any) -> Any:
    """`posisp/StepwiseISP-v0`: one module per step (see `envs.stepwise_isp.StepwiseISPEnv`)."""
    from envs.stepwise_isp import StepwiseISPEnv

    if core is None:
        cfg = _config(config)
        e = cfg.env
        defaults = {"max_steps": e.max_steps, "reuse_penalty": e.reuse_penalty,
                    "all_modules": e.all_modules_per_step}
        core, kwargs = PreparedSource(cfg, split), {**defaults, **kwargs}
    return StepwiseISPEnv(core, **kwargs)
