"""The compute a training run spends, each counter named once.

The same names serve everywhere a counter appears: an EnvRunner's per-iteration metrics (`isp/<name>`, summed
over EnvRunners; training images are RLlib's own episode count), the driver's lifetime state in every
checkpoint, the MLflow metrics (`Counters.metric`), the val curves and the rows of `posisp seeds` and
`posisp compare`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

IMAGES_METRIC = "charts/episodes_total"  # one episode is one training image


@dataclass
class Counters:
    """Lifetime compute of a training run."""

    images: int = 0  # training episodes: one image through one sampled pipeline (or K steps of one, step-wise)
    distinct_images: int = 0  # training images drawn: an image run through K pipelines (`pipelines_per_image`) once
    module_runs: int = 0  # ISP module applications: images x modules actually processed
    task_calls: int = 0  # task-model forward calls
    task_images: int = 0  # images the task model scored (forward)
    task_backward_images: int = 0  # images whose task loss was backpropagated (pathwise parameter learning)

    @staticmethod
    def names() -> tuple[str, ...]:
        return tuple(f.name for f in fields(Counters))

    @staticmethod
    def metric(name: str) -> str:
        """The MLflow key of a lifetime counter."""
        return IMAGES_METRIC if name == "images" else f"isp/{name}_total"

    @staticmethod
    def runner_key(name: str) -> str:
        """The key of an iteration's counter in RLlib's EnvRunner results."""
        from ray.rllib.utils.metrics import NUM_EPISODES

        return NUM_EPISODES if name == "images" else f"isp/{name}"

    def counts(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in Counters.names()}

    def metrics(self) -> dict[str, float]:
        return {Counters.metric(name): float(value) for name, value in self.counts().items()}

    def add_iteration(self, runners: dict[str, Any]) -> None:
        """Add one iteration's EnvRunner results."""
        for name in Counters.names():
            setattr(self, name, getattr(self, name) + iteration_count(runners, Counters.runner_key(name)))


def iteration_count(runners: dict[str, Any], key: str) -> int:
    """An EnvRunner counter of this iteration; 0 when absent or NaN (RLlib reports NaN for an iteration in
    which a restarted EnvRunner delivered nothing)."""
    try:
        value = float(runners.get(key) or 0)  # RLlib hands NumPy scalars as well as Python numbers
    except (TypeError, ValueError):
        return 0
    return int(value) if math.isfinite(value) else 0
