"""Running a trained policy: load it from a checkpoint, pick greedy pipelines, apply them, score a split."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch
from ray.rllib.core import COMPONENT_LEARNER, COMPONENT_LEARNER_GROUP, COMPONENT_RL_MODULE, DEFAULT_MODULE_ID

from envs.core import area_downsample
from envs.factory import env_kind
from posisp_dist.config import Config
from posisp_dist.isp.executor import ISPExecutor
from posisp_dist.isp.xp import to_numpy

MODULE_SUBDIR = Path(COMPONENT_LEARNER_GROUP) / COMPONENT_LEARNER / COMPONENT_RL_MODULE / DEFAULT_MODULE_ID


def load_policy(checkpoint: str | Path) -> Any:
    """The `SequencePolicyModule` stored in an RLlib algorithm checkpoint directory."""
    from ray.rllib.core.rl_module.rl_module import RLModule

    path = Path(checkpoint).resolve() / MODULE_SUBDIR  # RLlib reads it through pyarrow: absolute paths only
    if not path.exists():
        raise FileNotFoundError(f"{checkpoint} is not an algorithm checkpoint (missing {MODULE_SUBDIR})")
    module = RLModule.from_checkpoint(str(path))
    module.eval()
    return module


@torch.inference_mode()
def greedy_actions(module: Any, previews: np.ndarray, batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Greedy pipelines for (N, S, S, 3) previews -> tokens (N, L) int64, normalised params (N, P) float32."""
    from ray.rllib.core.columns import Columns

    tokens, params = [], []
    for i in range(0, len(previews), batch_size):
        obs = torch.from_numpy(np.ascontiguousarray(previews[i : i + batch_size], np.float32))
        act = module.forward_inference({Columns.OBS: obs})[Columns.ACTIONS]
        tokens.append(act["modules"].numpy().astype(np.int64))
        params.append(act["params"].numpy().astype(np.float32))
    return np.concatenate(tokens), np.concatenate(params)


def preview_of(images: Any, preview_size: int) -> np.ndarray:
    """The observation the policy was trained on: an area-downsampled host copy of the ISP input."""
    return area_downsample(to_numpy(images), preview_size).astype(np.float32)


@torch.inference_mode()
def greedy_unused(module: Any, obs: np.ndarray, used: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One greedy step-wise action per row, never a module in `used` (N, M): -> tokens (N,), params (N, P)."""
    from ray.rllib.core.columns import Columns

    out = module.forward_inference({Columns.OBS: torch.from_numpy(obs)})
    dist = module.get_inference_action_dist_cls().from_logits(out[Columns.ACTION_DIST_INPUTS])
    logits = dist.logits[:, 0, :].clone()
    logits[:, : used.shape[1]][torch.from_numpy(used)] = float("-inf")
    params = out[Columns.ACTIONS]["params"]  # greedy: the Beta means, or the pathwise parameter network's output
    return logits.argmax(-1).numpy().astype(np.int64), params.numpy().astype(np.float32)


def stepwise_greedy(
    module: Any, images: Any, executor: ISPExecutor, preview_size: int, max_steps: int
) -> tuple[np.ndarray, np.ndarray, Any]:
    """Roll a step-wise policy out greedily, each module at most once (as the sequence policy):
    -> tokens (N, K) STOP-padded, the params each chosen module was applied with, the final images."""
    from envs.stepwise_isp import stepwise_observation

    n, m = images.shape[0], executor.registry.n_modules
    tokens = np.full((n, max_steps), m, np.int64)
    params = np.tile(executor.registry.identity_normalised(), (n, 1)).astype(np.float32)
    step, used, alive = np.zeros(n), np.zeros((n, m), bool), np.ones(n, bool)
    current = images
    for k in range(max_steps):
        obs = stepwise_observation(current, step, used, max_steps, preview_size)
        tok, par = greedy_unused(module, obs, used)
        tok = np.where(alive, tok, m)
        rows = np.nonzero(tok != m)[0]
        if not len(rows):
            break
        sel = executor.xp.asarray(rows)
        current = current.copy()
        current[sel] = executor.run(current[sel], tok[rows][:, None], par[rows])
        for r in rows:
            sl = executor.registry.param_slice(int(tok[r]))
            params[r, sl] = par[r, sl]
        tokens[rows, k], used[rows, tok[rows]] = tok[rows], True
        alive &= tok != m
        step += 1
    return tokens, params, current


def policy_pipelines(module: Any, images: Any, executor: ISPExecutor, preview_size: int,
                     stepwise_steps: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Greedy (tokens, params) per image for a sequence policy, or a step-wise one rolled out K steps."""
    if stepwise_steps:
        return stepwise_greedy(module, images, executor, preview_size, stepwise_steps)[:2]
    return greedy_actions(module, preview_of(images, preview_size))


def apply_policy(
    module: Any, images: Any, executor: ISPExecutor, preview_size: int, chunk: int = 64,
    stepwise_steps: int | None = None,
) -> tuple[Any, np.ndarray, np.ndarray]:
    """Greedy pipeline per image, executed in batches: -> (outputs, tokens, params)."""
    xp: ModuleType = executor.xp
    tokens, params = policy_pipelines(module, images, executor, preview_size, stepwise_steps)
    outs = [executor.run(images[i : i + chunk], tokens[i : i + chunk], params[i : i + chunk]) for i in
            range(0, len(tokens), chunk)]
    return xp.concatenate(outs), tokens, params


def pipeline_summary(executor: ISPExecutor, tokens: np.ndarray, params: np.ndarray, rewards: np.ndarray) -> dict:
    """Most frequent greedy module sequences with their mean reward, plus the best single pipeline."""
    from collections import defaultdict

    groups: dict[tuple[str, ...], list[float]] = defaultdict(list)
    decoded = [executor.decode(t, p) for t, p in zip(tokens, params, strict=True)]
    for pipe, r in zip(decoded, rewards, strict=True):
        groups[pipe.modules].append(float(r))
    top = sorted(groups.items(), key=lambda kv: -len(kv[1]))[:10]
    best = int(np.argmax(rewards))
    return {
        "sequences": [{"modules": list(k), "images": len(v), "mean_reward": float(np.mean(v))} for k, v in top],
        "best": {"reward": float(rewards[best]), **decoded[best].to_json()},
        "mean_reward": float(np.mean(rewards)),
    }


def greedy_on_split(cfg: Config, checkpoint: str | Path, split: str, core: Any = None) -> dict[str, Any]:
    """Greedy pipelines of the checkpoint's policy on every image of `split`, run and scored in batches
    (`core`: that split's `ISPTaskCore`, when the caller keeps one)."""
    from envs.factory import CoreSource

    core = core if core is not None else CoreSource(cfg, split).get()
    module = load_policy(checkpoint)
    tokens, params = policy_pipelines(module, core.images, core.executor, core.preview_size, stepwise_steps(cfg))
    chunks = [
        core.evaluate(np.arange(i, min(i + 64, len(core))), tokens[i : i + 64], params[i : i + 64], keep_output=True)
        for i in range(0, len(core), 64)
    ]
    outputs = core.xp.concatenate([c.output for c in chunks])
    rewards = np.concatenate([c.reward for c in chunks])
    metric = core.task.evaluate(outputs, core.targets)
    return {"core": core, "tokens": tokens, "params": params, "outputs": outputs, "rewards": rewards, **metric,
            "score": float(np.mean(np.concatenate([c.task_score for c in chunks])))}


def stepwise_steps(cfg: Config) -> int | None:
    """K for a step-wise run, None for the sequence policy."""
    return env_kind(cfg).greedy_steps(cfg)
