"""`posisp/StepwiseISP-v0`: the step-wise twin (AdaptiveISP-style), one module per step, a reward per step.

The step logic runs on N episodes at once (`StepwiseEpisodes`): the single env is N = 1 and the vector env
steps all its sub-envs with one executor call and one task-model batch per step.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from envs.core import CoreBound, DataSource, ISPTaskCore, area_downsample
from envs.sequence_isp import action_parts, sequence_action_space
from envs.vector import ISPVectorEnv
from posisp_dist.isp.xp import to_numpy


def stepwise_observation_space(preview: int, n_modules: int) -> spaces.Box:
    """Preview RGB + one constant plane for progress t/K + one per module (1 = used): AdaptiveISP's state."""
    return spaces.Box(0.0, 1.0, (preview, preview, 4 + n_modules), np.float32)


def stepwise_observation(images: Any, step: np.ndarray, used: np.ndarray, max_steps: int, size: int) -> np.ndarray:
    """(N, S, S, 4 + M): preview of the current images, progress plane t/K, used-module planes."""
    n = len(step)
    img = area_downsample(to_numpy(images), size).astype(np.float32)
    planes = np.concatenate([(step / max_steps)[:, None], used.astype(np.float64)], 1)
    tiled = np.broadcast_to(planes[:, None, None, :], (n, size, size, planes.shape[1]))
    return np.concatenate([img, tiled], axis=-1).astype(np.float32)


class StepwiseEpisodes:
    """N step-wise episodes over the images of a core: current images, step counters, used masks, scores."""

    def __init__(
        self, core: ISPTaskCore, n: int, max_steps: int, reuse_penalty: float, all_modules: bool,
        param_grad: bool = False,
    ) -> None:
        self.core, self.n, self.max_steps = core, n, max_steps
        self.reuse_penalty, self.all_modules, self.param_grad = reuse_penalty, all_modules, param_grad
        m = core.registry.n_modules
        self.idx = np.zeros(n, np.int64)
        self.step_count = np.zeros(n, np.int64)
        self.used = np.zeros((n, m), bool)
        self.score = np.zeros(n)
        self.penalty = np.zeros(n)
        self.images = core.xp.zeros((n, *core.images.shape[1:]), core.xp.float32)

    def reset(self, which: np.ndarray, rng: np.random.Generator) -> None:
        k = int(which.sum())
        if not k:
            return
        new = rng.integers(len(self.core), size=k)
        self.idx[which], self.step_count[which], self.used[which] = new, 0, False
        self.images[self.core.xp.asarray(np.nonzero(which)[0])] = self.core.images[self.core.xp.asarray(new)]
        self.score[which] = self.core.ref_score[new]
        self.penalty[which] = self.core.ref_penalty[new] if self.core.use_brightness else 0.0

    def observation(self) -> np.ndarray:
        return stepwise_observation(self.images, self.step_count, self.used, self.max_steps, self.core.preview_size)

    def step(self, active: np.ndarray, tokens: np.ndarray, params: np.ndarray) -> dict[str, np.ndarray]:
        """Apply one module (or STOP) per active episode; returns reward, terminated and per-step figures."""
        core, xp, stop = self.core, self.core.xp, self.core.registry.n_modules
        t, p = core.check_action(tokens.reshape(-1, 1), params, self.n, 1)
        t = t[:, 0]
        reward, cost = np.zeros(self.n), np.zeros(self.n)
        grad, loss = np.zeros((self.n, core.registry.n_params), np.float32), np.zeros(self.n)
        run = active & (t != stop)
        rows = np.nonzero(run)[0]
        if len(rows):
            sel, outputs = xp.asarray(rows), None
            if self.all_modules:  # AdaptiveISP's compute: every module runs on every image, one output is kept
                m = core.registry.n_modules
                every = np.tile(np.arange(m), len(rows))[:, None]
                grid = core.executor.run(xp.repeat(self.images[sel], m, axis=0), every, np.repeat(p[rows], m, axis=0))
                outputs = grid[xp.asarray(np.arange(len(rows)) * m + t[rows])]
            r = core.step(self.images[sel], self.idx[rows], t[rows][:, None], p[rows], self.score[rows],
                          self.penalty[rows], param_grad=self.param_grad, outputs=outputs)
            cost[rows] = r.cost
            reward[rows] = r.reward - self.reuse_penalty * self.used[rows, t[rows]]
            if self.param_grad:  # the chosen module through its torch twin into the task loss (same values)
                grad[rows], loss[rows] = r.param_grad, r.pathwise_loss
            self.images[sel], self.score[rows], self.penalty[rows] = r.output, r.task_score, r.penalty
            self.used[rows, t[rows]] = True
        self.step_count[active] += 1
        terminated = active & ((t == stop) | (self.step_count >= self.max_steps))
        result = {
            "reward": reward,
            "terminated": terminated,
            "cost": cost,
            "task_score": self.score.copy(),
            "ref_score": core.ref_score[self.idx],
            "length": self.used.sum(1),
        }
        if self.param_grad:  # d(task loss after this step)/d(normalised params): the chosen module's only
            result.update(param_grad=grad, pathwise_loss=loss)
        return result


class StepwiseISPEnv(CoreBound, gym.Env):
    """
    ## Description
    AdaptiveISP's formulation: at each of up to K steps the agent picks one module (or STOP) and its
    parameters; the module is applied to the current image and rewarded for the task-score change.

    ## Action Space
    `Dict(modules=MultiDiscrete([M+1]), params=Box(0, 1, (P,)))`: the module id (M = STOP) and the
    normalised parameters of all modules, of which the chosen module's are used.

    ## Observation Space
    `Box(0, 1, (S, S, 4 + M), float32)`: preview of the current image, a plane t/K and one plane per module
    (1 where it was used), AdaptiveISP's state vector broadcast as constant planes.

    ## Rewards
    `score(new) - score(prev) - [pen(new) - pen(prev)] - cost_lambda * cost - reuse_penalty * [reused]`.
    Without reuse, the rewards of an episode add up to the sequence env's reward for the same pipeline.

    ## Episode End
    Terminated on STOP or after K steps.

    ## Arguments
    `core`, `max_steps` (K, default 5), `reuse_penalty` (AdaptiveISP: 1.0), `all_modules` (AdaptiveISP's
    compute profile: all M modules run at every step, one output is kept), `param_grad` (the pathwise
    learner: the chosen module also runs through its torch twin into the task loss, and `info` carries the
    gradient of the loss after the step w.r.t. the normalised params, `param_grad`, and that loss).
    """

    metadata = {"render_modes": []}

    def __init__(
        self,
        core: DataSource,
        max_steps: int = 5,
        reuse_penalty: float = 1.0,
        all_modules: bool = False,
        param_grad: bool = False,
    ) -> None:
        self.source, self.max_steps, self.reuse_penalty, self.all_modules = core, max_steps, reuse_penalty, all_modules
        self.param_grad = param_grad
        reg = core.registry
        self.observation_space = stepwise_observation_space(core.preview_size, reg.n_modules)
        self.action_space = sequence_action_space(reg.n_modules, 1, reg.n_params)
        self._ep: StepwiseEpisodes | None = None
        self._done = True

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        if self._ep is None:
            self._ep = StepwiseEpisodes(
                self.core, 1, self.max_steps, self.reuse_penalty, self.all_modules, self.param_grad
            )
        self._ep.reset(np.ones(1, bool), self.np_random)
        self._done = False
        return self._ep.observation()[0], {"image_id": int(self.core.batch.ids[self._ep.idx[0]])}

    def step(self, action: dict[str, Any]):
        if self._done or self._ep is None:
            raise RuntimeError("call reset() before step(): the episode has ended or not started")
        modules, params = action_parts(action)
        r = self._ep.step(np.ones(1, bool), modules, params[None])
        self._done = bool(r["terminated"][0])
        info = {
            k: v[0] if k == "param_grad" else float(v[0]) for k, v in r.items()
                if k not in ("reward", "terminated")
        }
        return self._ep.observation()[0], float(r["reward"][0]), self._done, False, info


class StepwiseISPVectorEnv(ISPVectorEnv):
    """N step-wise episodes stepped together (one executor call, one task batch per step); NEXT_STEP autoreset."""

    def __init__(
        self,
        core: DataSource,
        num_envs: int,
        max_steps: int = 5,
        reuse_penalty: float = 1.0,
        all_modules: bool = False,
        param_grad: bool = False,
    ) -> None:
        self._single = StepwiseISPEnv(core, max_steps, reuse_penalty, all_modules, param_grad)
        self._spaces(core, num_envs, self._single)
        self._ep: StepwiseEpisodes | None = None

    def _episodes(self) -> StepwiseEpisodes:
        if self._ep is None:
            s = self._single
            self._ep = StepwiseEpisodes(
                self.core, self.num_envs, s.max_steps, s.reuse_penalty, s.all_modules, s.param_grad
            )
        return self._ep

    def _start(self, which: np.ndarray) -> None:
        self._episodes().reset(which, self.np_random)

    def _act(self, active: np.ndarray, actions: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
        r = self._episodes().step(active, np.asarray(actions["modules"]), np.asarray(actions["params"]))
        return r["reward"], r["terminated"], {k: v for k, v in r.items() if k not in ("reward", "terminated")}

    def _observation(self) -> np.ndarray:
        return self._episodes().observation()

    def _image_ids(self) -> np.ndarray:
        return self.core.batch.ids[self._episodes().idx]
