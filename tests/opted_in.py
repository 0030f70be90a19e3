"""A test helper for the modules of posisp_dist/isp/extra/: one pipeline made of the module alone, run by the env and
evaluated pathwise, in a registry of the paper's ten plus the module (what a config that opts in builds)."""

from __future__ import annotations

from typing import Any

import numpy as np

from envs import SequenceISPEnv
from envs.core import ISPTaskCore
from posisp_dist.data.shards import RawDataset
from posisp_dist.isp.catalogue import registry_for
from posisp_dist.isp.registry import DEFAULT_REGISTRY as R


def step_opted_in(spec: Any, normalised: list[float], data_root: Any, task: Any) -> tuple[float, dict, np.ndarray]:
    """One env step of the pipeline [spec] with its params at `normalised`, and dL/dp of those params for two
    images: (the reward, the step's info, the (2, k) gradient). The action space has grown by the one module."""
    reg = registry_for([*R.names, spec.name])
    core = ISPTaskCore(RawDataset(data_root, "val").load(), task, reg, preview_size=16)
    env = SequenceISPEnv(core, max_len=3)
    assert env.action_space["modules"].nvec.tolist() == [R.n_modules + 2] * 3
    env.reset(seed=0)
    i, stop = reg.index(spec.name), reg.n_modules
    params = reg.identity_normalised()
    params[reg.param_slice(i)] = normalised
    _, reward, _, _, info = env.step({"modules": np.array([i, stop, 0]), "params": params})
    res = core.evaluate(np.arange(2), np.array([[i, stop, stop]] * 2), np.stack([params, params]), param_grad=True)
    assert np.isfinite(res.param_grad).all()
    return reward, info, res.param_grad[:, reg.param_slice(i)]
