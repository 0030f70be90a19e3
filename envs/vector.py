"""The one vector-env base of the ISP envs: NEXT_STEP autoreset (Gymnasium's default) over N sub-envs that share
one core, so that each step is one executor call and one task-model batch for all of them."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode, VectorEnv

from envs.core import CoreBound, DataSource


class ISPVectorEnv(CoreBound, VectorEnv):
    """A sub-env whose episode ended is reset by the following `step`, which does not act on it and returns reward
    0 and `terminated=False` for it. Subclasses say how sub-envs start (`_start`), act (`_act`) and are seen
    (`_observation`)."""

    metadata = {"autoreset_mode": AutoresetMode.NEXT_STEP}

    def _spaces(self, core: DataSource, num_envs: int, single: gym.Env) -> None:
        self.source, self.num_envs = core, num_envs
        self.single_observation_space, self.single_action_space = single.observation_space, single.action_space
        self.observation_space = gym.vector.utils.batch_space(single.observation_space, num_envs)
        self.action_space = gym.vector.utils.batch_space(single.action_space, num_envs)
        self._needs_reset = np.ones(num_envs, bool)

    def _start(self, which: np.ndarray) -> None:
        """Start new episodes in the sub-envs `which` (a bool mask), drawing images with `self.np_random`."""
        raise NotImplementedError

    def _act(self, active: np.ndarray, actions: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
        """Step the sub-envs `active` -> (reward, terminated, info), each (num_envs, ...), 0 where not active."""
        raise NotImplementedError

    def _observation(self) -> np.ndarray:
        raise NotImplementedError

    def _image_ids(self) -> np.ndarray:
        raise NotImplementedError

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        self._start(np.ones(self.num_envs, bool))
        self._needs_reset[:] = False
        return self._observation(), {"image_id": self._image_ids()}

    def step(self, actions: dict[str, Any]):
        resetting = self._needs_reset.copy()
        reward, terminated, info = self._act(~resetting, actions)
        if resetting.any():  # NEXT_STEP: these sub-envs only start a new episode
            self._start(resetting)
            info = {**info, "image_id": self._image_ids()}
        self._needs_reset = terminated.copy()
        return self._observation(), reward, terminated, np.zeros(self.num_envs, bool), info
