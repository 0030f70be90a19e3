"""PPO whose EnvRunners sample the next batch while the central learner updates on the last one (`train.overlap`).

RLlib's PPO alternates: the EnvRunners sample while the learner waits, then the learner updates while the
EnvRunners wait. Here one iteration is

    collect the round the EnvRunners started last iteration  (sampled with the weights of two updates ago)
    send them the learner's current weights                    (they are idle: a short blocking call)
    start their next round, asynchronously                     (with those weights)
    update the learner on the collected round                  (while they sample)

so sampling and learning overlap, and each batch is one update older than the weights it trains: PPO's ratio
and KL terms use the sampling policy's log-probabilities and distribution inputs, which travel with the batch,
and the pathwise gradients `g` were taken at the sampling weights' parameters. The first iteration (and the first
after a restore or when no EnvRunner answered) samples synchronously, as RLlib does.

Everything goes through RLlib's EnvRunnerGroup (`foreach_env_runner_async`, `fetch_ready_async_reqs`,
`sync_weights`: its fault-tolerant actor manager marks a failed EnvRunner unhealthy, and `Algorithm.step`
restores it) and PPO's own learner update and metrics keys.
"""

from __future__ import annotations

from typing import Any

from ray.rllib.algorithms.ppo.ppo import PPO
from ray.rllib.core import ALL_MODULES
from ray.rllib.utils.annotations import override
from ray.rllib.utils.metrics import (
    ENV_RUNNER_RESULTS,
    ENV_RUNNER_SAMPLING_TIMER,
    LEARNER_RESULTS,
    LEARNER_UPDATE_TIMER,
    NUM_ENV_STEPS_SAMPLED_LIFETIME,
    NUM_MODULE_STEPS_TRAINED_LIFETIME,
    SYNCH_WORKER_WEIGHTS_TIMER,
    TIMERS,
)

SAMPLE_TAG = "posisp_overlap_sample"


def _sample_with_metrics(runner: Any) -> tuple[Any, Any]:
    """Runs in an EnvRunner: one round of its share of the train batch, and its metrics."""
    return runner.sample(), runner.get_metrics()


class OverlappingPPO(PPO):
    """RLlib's PPO with the EnvRunners' next sampling round overlapping the learner's update (module docstring).
    With no remote EnvRunners it is PPO's `training_step` unchanged."""

    _in_flight = False

    @override(PPO)
    def training_step(self) -> None:
        group = self.env_runner_group
        if group is None or group.num_remote_workers() <= 0:
            return super().training_step()
        with self.metrics.log_time((TIMERS, ENV_RUNNER_SAMPLING_TIMER)):
            results = self._collect() if self._in_flight else []
            if not results:  # the first round, or every EnvRunner of the last round failed: sample now
                group.foreach_env_runner_async(_sample_with_metrics, tag=SAMPLE_TAG)
                results = self._collect()
            if not results:
                return
            episodes = [e for sampled, _ in results for e in sampled]
            self.metrics.aggregate([m for _, m in results], key=ENV_RUNNER_RESULTS)
        modules = {str(m) for m in self.config.policies} if self.config.policies else None
        with self.metrics.log_time((TIMERS, SYNCH_WORKER_WEIGHTS_TIMER)):  # the EnvRunners are idle now
            group.sync_weights(from_worker_or_learner_group=self.learner_group, policies=modules, inference_only=True)
        self._in_flight = group.foreach_env_runner_async(_sample_with_metrics, tag=SAMPLE_TAG) > 0
        with self.metrics.log_time((TIMERS, LEARNER_UPDATE_TIMER)):  # ... while they sample the next round
            learner_results = self.learner_group.update(
                episodes=episodes,
                timesteps={
                    NUM_ENV_STEPS_SAMPLED_LIFETIME: self.metrics.peek(
                        (ENV_RUNNER_RESULTS, NUM_ENV_STEPS_SAMPLED_LIFETIME)
                    ),
                    NUM_MODULE_STEPS_TRAINED_LIFETIME: self.metrics.peek(
                        (LEARNER_RESULTS, ALL_MODULES, NUM_MODULE_STEPS_TRAINED_LIFETIME), default=0
                    ),
                },
                num_epochs=self.config.num_epochs,
                minibatch_size=self.config.minibatch_size,
                shuffle_batch_per_epoch=self.config.shuffle_batch_per_epoch,
            )
            self.metrics.aggregate(learner_results, key=LEARNER_RESULTS)

    def _collect(self) -> list[tuple[Any, Any]]:
        """Wait for the round in flight (at most `sample_timeout_s`): (episodes, metrics) per EnvRunner that
        answered; a failed EnvRunner is marked unhealthy by RLlib and left out."""
        self._in_flight = False
        ready = self.env_runner_group.fetch_ready_async_reqs(
            tags=SAMPLE_TAG, timeout_seconds=self.config.sample_timeout_s
        )
        return [result for _, result in ready]
