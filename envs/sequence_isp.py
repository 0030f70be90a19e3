"""`posisp/SequenceISP-v0`: POS-ISP's single-step environment, and its batched vector form."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from gymnasium.vector import AutoresetMode, VectorEnv

from envs.core import CoreBound, DataSource, ISPTaskCore, StepResult


def action_parts(action: Any) -> tuple[np.ndarray, np.ndarray]:
    """(modules, params) of a dict action; a clear error when it is not a dict with both keys."""
    missing = [k for k in ("modules", "params") if not isinstance(action, dict) or k not in action]
    if missing:
        got = sorted(action) if isinstance(action, dict) else type(action).__name__
        raise ValueError(f"action must be a dict with 'modules' and 'params'; missing {missing}, got {got}")
    return np.asarray(action["modules"]), np.asarray(action["params"])


def sequence_action_space(n_modules: int, max_len: int, n_params: int) -> spaces.Dict:
    """Dict(modules = MultiDiscrete([M+1] * L), params = Box[0, 1]^P); id M is STOP."""
    return spaces.Dict(
        {
            "modules": spaces.MultiDiscrete(np.full(max_len, n_modules + 1)),
            "params": spaces.Box(0.0, 1.0, (n_params,), np.float32),
        }
    )


def _info(core: ISPTaskCore, r: StepResult, i: int) -> dict[str, Any]:
    return {
        "pipeline": core.executor.decode(r.tokens[i], r.params[i]).to_json(),
        "task_score": float(r.task_score[i]),
        "ref_score": float(r.ref_score[i]),
        "cost": float(r.cost[i]),
        "length": int(r.length[i]),
        **_pathwise_info(r, i),
    }


def _pathwise_info(r: StepResult, i: int | slice) -> dict[str, Any]:
    """The pathwise learner's part of a step's info: the gradient of the image's task loss w.r.t. its
    normalised params (`param_grad`, what `train.connectors.AddParamGradToBatch` hands the learner)."""
    if r.param_grad is None:
        return {}
    return {"param_grad": r.param_grad[i], "pathwise_loss": r.pathwise_loss[i]}


class SequenceISPEnv(CoreBound, gym.Env):
    """
    ## Description
    One raw image per episode. The agent answers with a *whole* ISP pipeline: an ordered list of
    modules and the parameters of all modules. The pipeline runs once, and the frozen task model
    scores the result against the input-RAW rendering of the same image (POS-ISP).

    ## Action Space
    `Dict(modules=MultiDiscrete([M+1]*L), params=Box(0, 1, (P,)))`: module ids in execution order, where
    id M is STOP and ends the pipeline; normalised parameters of every module (the registry maps them to
    physical units). Every action in the space is valid: a repeated module runs, and costs, again.

    ## Observation Space
    `Box(0, 1, (S, S, 3), float32)`: an area-downsampled preview of the input-RAW rendering.

    ## Rewards
    `score(ISP(x)) - score(x) - cost_lambda * cost(pipeline) - [pen(ISP(x)) - pen(x)]`, where score is the
    task model's per-image signal and pen the paper's brightness range penalty. A STOP-only pipeline
    returns exactly 0.

    ## Episode End
    `terminated=True` after the single step; `info` holds the decoded pipeline, the task score and cost,
    and with `param_grad=True` the pathwise gradient of the task loss w.r.t. the normalised params
    (`param_grad`, shape (P,)) and that loss (`pathwise_loss`).

    ## Arguments
    `core`: an `ISPTaskCore` (images, executor, task model), or a lazy `envs.factory.CoreSource` that loads
    them at the first reset; `max_len`: longest pipeline L; `param_grad`: also return the pathwise gradient
    (POS-ISP's parameter learning, through the torch twin of the modules and the task model's loss).
    """

    metadata = {"render_modes": []}

    def __init__(self, core: DataSource, max_len: int = 10, param_grad: bool = False) -> None:
        self.source, self.max_len, self.param_grad = core, max_len, param_grad
        s = core.preview_size
        self.observation_space = spaces.Box(0.0, 1.0, (s, s, 3), np.float32)
        self.action_space = sequence_action_space(core.registry.n_modules, max_len, core.registry.n_params)
        self._idx: int | None = None

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        self._idx = int(self.np_random.integers(len(self.core)))
        return self.core.previews[self._idx], {"image_id": int(self.core.batch.ids[self._idx])}

    def step(self, action: dict[str, Any]):
        if self._idx is None:
            raise RuntimeError("call reset() before step(): the episode has ended or not started")
        tokens, params = (a[None] for a in action_parts(action))
        r = self.core.evaluate(np.array([self._idx]), tokens, params, self.max_len, param_grad=self.param_grad)
        obs = self.core.previews[self._idx]
        self._idx = None
        return obs, float(r.reward[0]), True, False, _info(self.core, r, 0)


class SequenceISPVectorEnv(CoreBound, VectorEnv):
    """N copies of `SequenceISPEnv` stepped together: one executor call and one task batch per step.

    Autoreset is NEXT_STEP (Gymnasium's default): after the single-step episodes end, the following
    `step` resets the sub-envs and returns reward 0 with `terminated=False`.
    """

    metadata = {"autoreset_mode": AutoresetMode.NEXT_STEP}

    def __init__(
        self, core: DataSource, num_envs: int, max_len: int = 10, param_grad: bool = False
    ) -> None:
        self.source, self.num_envs, self.max_len, self.param_grad = core, num_envs, max_len, param_grad
        single = SequenceISPEnv(core, max_len, param_grad)
        self.single_observation_space = single.observation_space
        self.single_action_space = single.action_space
        self.observation_space = gym.vector.utils.batch_space(single.observation_space, num_envs)
        self.action_space = gym.vector.utils.batch_space(single.action_space, num_envs)
        self._idx = np.zeros(num_envs, np.int64)
        self._needs_reset = True

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        self._idx = self.np_random.integers(len(self.core), size=self.num_envs)
        self._needs_reset = False
        return self.core.previews[self._idx], {"image_id": self.core.batch.ids[self._idx]}

    def step(self, actions: dict[str, Any]):
        if self._needs_reset:  # NEXT_STEP autoreset: this call only starts new episodes
            obs, info = self.reset()
            zeros = np.zeros(self.num_envs)
            return obs, zeros, zeros.astype(bool), zeros.astype(bool), info
        tokens, params = actions["modules"], actions["params"]
        r = self.core.evaluate(self._idx, tokens, params, self.max_len, param_grad=self.param_grad)
        obs = self.core.previews[self._idx]
        self._needs_reset = True
        done = np.ones(self.num_envs, bool)
        info = {"task_score": r.task_score, "ref_score": r.ref_score, "cost": r.cost, "length": r.length}
        info.update(_pathwise_info(r, slice(None)))
        return obs, r.reward, done, np.zeros(self.num_envs, bool), info
