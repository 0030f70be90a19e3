"""`train.overlap`: the EnvRunners sample the next round while the learner updates (posisp_dist/train/overlap.py).

What tells it apart from RLlib's PPO is which weights sampled each round: with the overlap, when `train()`
returns the EnvRunners hold the weights from before the update just made (they are sampling with them), and
every iteration still trains on one whole round of the train batch's size; without it they hold the learner's."""

from __future__ import annotations

import numpy as np
import pytest

BATCH = 64


def build(tiny_cfg, overlap: bool):
    from posisp_dist.train.algo_config import build_algo_config

    raw = tiny_cfg.model_dump(mode="json")
    raw["env"].update(preview_size=16, num_envs_per_runner=16)
    raw["ppo"].update(train_batch_size=BATCH, minibatch_size=32, num_epochs=1)
    raw["train"].update(num_env_runners=2, overlap=overlap)
    raw["policy"]["param_learning"] = "pathwise"
    return build_algo_config(type(tiny_cfg).model_validate(raw)).build_algo()


def weights_of(state: dict) -> dict[str, np.ndarray]:
    return {k: np.asarray(v) for k, v in state.items() if k.startswith("net.") and "value_head" not in k}


@pytest.mark.parametrize("overlap", [True, False])
def test_the_env_runners_sample_with_the_weights_from_before_the_last_update(
    tiny_cfg, tiny_data, tiny_task, ray_local, overlap
):
    from ray.rllib.utils.metrics import ENV_RUNNER_RESULTS, NUM_ENV_STEPS_SAMPLED_LIFETIME

    from posisp_dist.train.overlap import OverlappingPPO

    algo = build(tiny_cfg, overlap)
    try:
        assert isinstance(algo, OverlappingPPO) == overlap
        before = None
        for _ in range(3):
            before = weights_of(algo.learner_group.get_state()["learner"]["rl_module"]["default_policy"])
            result = algo.train()
        learner = weights_of(algo.learner_group.get_state()["learner"]["rl_module"]["default_policy"])
        # queued behind the round in flight (with the overlap), so this also waits for it to end
        runners = algo.env_runner_group.foreach_env_runner(lambda r: r.module.get_state(), local_env_runner=False)
        assert len(runners) == 2
        changed = [k for k in learner if not np.array_equal(learner[k], before[k])]
        assert changed, "the last update changed no weight"
        for state in runners:
            held = weights_of({k: np.array(v) for k, v in state.items()})
            same_as = before if overlap else learner
            for k in changed:
                np.testing.assert_array_equal(held[k], same_as[k], err_msg=k)
        assert result[ENV_RUNNER_RESULTS][NUM_ENV_STEPS_SAMPLED_LIFETIME] == 3 * BATCH
    finally:
        algo.stop()
