"""`posisp/SequenceISP-v0`: POS-ISP's single-step environment, and its batched vector form."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from envs.core import CoreBound, DataSource, ISPTaskCore, StepResult
from envs.vector import ISPVectorEnv

GROUP = "group"  # step-info key: the id of the image group a pipeline belongs to (K pipelines per image)
FIRST_OF_IMAGE = "first_of_image"  # step-info key: the group's first pipeline (counts one distinct image)


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


class SequenceISPVectorEnv(ISPVectorEnv):
    """N copies of `SequenceISPEnv` stepped together: one executor call and one task batch per step.

    Autoreset is NEXT_STEP (Gymnasium's default): after the single-step episodes end, the following
    `step` resets the sub-envs and returns reward 0 with `terminated=False`.

    With `pipelines_per_image` K > 1 the sub-envs come in groups of K consecutive slots that start on the same
    image: N/K images per step, each run through K sampled pipelines (its preview and reference score are the
    image's own, computed once). Every step's info names each sub-env's `group` (an id unique over the run's
    EnvRunners: worker index << 40 + draw number) and whether it is the `first_of_image` (one per group: the
    distinct training images), so the learner can score each pipeline against the image's other K - 1
    (`train/pathwise.py::TerminalAdvantages`).
    """

    def __init__(
        self, core: DataSource, num_envs: int, max_len: int = 10, param_grad: bool = False,
        pipelines_per_image: int = 1,
    ) -> None:
        if pipelines_per_image < 1 or num_envs % pipelines_per_image:
            raise ValueError(f"num_envs ({num_envs}) must be a multiple of pipelines_per_image ({pipelines_per_image})")
        self.max_len, self.param_grad, self.k = max_len, param_grad, pipelines_per_image
        self._spaces(core, num_envs, SequenceISPEnv(core, max_len, param_grad))
        self._idx = np.zeros(num_envs, np.int64)
        self._group = np.zeros(num_envs, np.int64)
        self._draws = 0

    def _start(self, which: np.ndarray) -> None:
        groups = which.reshape(-1, self.k)
        if (groups.any(axis=1) != groups.all(axis=1)).any():
            raise RuntimeError("the K sub-envs of an image group must start together")
        starting = groups[:, 0]
        n = int(starting.sum())
        if n:
            self._idx.reshape(-1, self.k)[starting] = self.np_random.integers(len(self.core), size=n)[:, None]
            worker = int(getattr(self.source, "worker_index", 0) or 0)
            self._group.reshape(-1, self.k)[starting] = ((worker << 40) + self._draws + np.arange(n))[:, None]
            self._draws += n

    def _act(self, active: np.ndarray, actions: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
        n, rows = self.num_envs, np.nonzero(active)[0]
        if not len(rows):
            return np.zeros(n), np.zeros(n, bool), {}
        tokens, params = np.asarray(actions["modules"])[rows], np.asarray(actions["params"])[rows]
        r = self.core.evaluate(self._idx[rows], tokens, params, self.max_len, param_grad=self.param_grad)
        info = {"task_score": r.task_score, "ref_score": r.ref_score, "cost": r.cost, "length": r.length,
                GROUP: self._group[rows], FIRST_OF_IMAGE: rows % self.k == 0}
        info.update(_pathwise_info(r, slice(None)))
        return _scatter(r.reward, rows, n), active.copy(), {k: _scatter(v, rows, n) for k, v in info.items()}

    def _observation(self) -> np.ndarray:
        return self.core.previews[self._idx]

    def _image_ids(self) -> np.ndarray:
        return self.core.batch.ids[self._idx]


def _scatter(values: np.ndarray, rows: np.ndarray, n: int) -> np.ndarray:
    """(len(rows), ...) values of the active sub-envs -> (n, ...), zero elsewhere."""
    full = np.zeros((n, *np.shape(values)[1:]), np.asarray(values).dtype)
    full[rows] = values
    return full
