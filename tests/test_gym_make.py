"""The registered ids build as Gymnasium users build them: `gymnasium.make(id)` with no arguments (lazy built-in
quick data) or with `config=`, and both pass `check_env` as made; a dict action without `params` is a clear error."""

from __future__ import annotations

import warnings

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import envs  # noqa: F401  (registers the ids)

IDS = ["posisp/SequenceISP-v0", "posisp/StepwiseISP-v0"]


@pytest.mark.parametrize("env_id", IDS)
def test_make_with_no_arguments_builds_lazily_on_the_quick_config(env_id, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the quick config's relative data root: nothing may be built here yet
    env = gym.make(env_id)
    assert env.observation_space.shape[:2] == (64, 64) and "params" in env.action_space.spaces
    assert not (tmp_path / ".posisp").exists()  # data and task model come at the first reset, not here


@pytest.mark.parametrize("env_id", IDS)
def test_make_with_a_config_passes_check_env_as_made(env_id, tiny_cfg, tiny_data, tiny_task):
    for config in (tiny_cfg, tiny_cfg.model_dump(mode="json")):
        env = gym.make(env_id, config=config)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            check_env(env)  # the made env, wrappers and all
            check_env(env.unwrapped)
        messages = [str(w.message) for w in caught if "is different from the unwrapped version" not in str(w.message)]
        assert messages == []
        obs, _ = env.reset(seed=0)
        assert env.observation_space.contains(obs) and obs.shape[0] == tiny_cfg.env.preview_size


@pytest.mark.parametrize("env_id", IDS)
def test_a_dict_action_without_params_is_a_clear_error(env_id, tiny_cfg, tiny_data, tiny_task):
    env = gym.make(env_id, config=tiny_cfg).unwrapped
    env.reset(seed=0)
    modules = np.zeros(env.action_space["modules"].shape, np.int64)
    with pytest.raises(ValueError, match="missing \\['params'\\]"):
        env.step({"modules": modules})
