"""Running a trained sequence policy: load it from a checkpoint, pick greedy pipelines, apply them."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch

from envs.core import area_downsample
from posisp_dist.isp.executor import ISPExecutor
from posisp_dist.isp.xp import to_numpy

MODULE_SUBDIR = Path("learner_group") / "learner" / "rl_module" / "default_policy"


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


def apply_policy(
    module: Any, images: Any, executor: ISPExecutor, preview_size: int, chunk: int = 64
) -> tuple[Any, np.ndarray, np.ndarray]:
    """Greedy pipeline per image, executed in batches: -> (outputs, tokens, params)."""
    xp: ModuleType = executor.xp
    tokens, params = greedy_actions(module, preview_of(images, preview_size))
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
