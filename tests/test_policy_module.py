"""`SequencePolicyModule` in RLlib's contract, built with `RLModuleSpec(...).build()` (no Ray cluster)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gymnasium import spaces
from ray.rllib.core.columns import Columns
from ray.rllib.core.rl_module.rl_module import RLModuleSpec

from envs.sequence_isp import sequence_action_space
from posisp_dist.isp import DEFAULT_REGISTRY as R
from posisp_dist.policy import PipelineDistribution, SequencePolicyModule

OBS = spaces.Box(0.0, 1.0, (32, 32, 3), np.float32)
ACT = sequence_action_space(R.n_modules, 10, R.n_params)  # the default config's modules, max_len 10


def build(**model_config):
    spec = RLModuleSpec(module_class=SequencePolicyModule, observation_space=OBS, action_space=ACT,
                        model_config={"hidden": 32, **model_config})
    return spec.build()


@pytest.fixture(scope="module")
def module():
    torch.manual_seed(0)
    return build()


def test_exploration_output_is_a_valid_action_with_its_logprob(module):
    out = module.forward_exploration({Columns.OBS: torch.rand(16, 32, 32, 3)})
    act = {k: v.numpy() for k, v in out[Columns.ACTIONS].items()}
    for i in range(16):
        assert ACT.contains({"modules": act["modules"][i], "params": act["params"][i].astype(np.float32)})
    dist_cls = module.get_exploration_action_dist_cls()
    dist = dist_cls.from_logits(out[Columns.ACTION_DIST_INPUTS])
    torch.testing.assert_close(dist.logp(out[Columns.ACTIONS]), out[Columns.ACTION_LOGP])
    assert out[Columns.ACTION_DIST_INPUTS].shape[-1] == PipelineDistribution.required_input_dim(ACT)


def test_train_pass_teacher_forces_the_stored_pipeline(module):
    obs = torch.rand(8, 32, 32, 3)
    out = module.forward_exploration({Columns.OBS: obs})
    train = module.forward_train({Columns.OBS: obs, Columns.ACTIONS: out[Columns.ACTIONS]})
    cur = module.get_train_action_dist_cls().from_logits(train[Columns.ACTION_DIST_INPUTS])
    old = module.get_exploration_action_dist_cls().from_logits(out[Columns.ACTION_DIST_INPUTS])
    # same weights: PPO's ratio is exactly 1 and the KL exactly 0
    torch.testing.assert_close(cur.logp(out[Columns.ACTIONS]), out[Columns.ACTION_LOGP])
    torch.testing.assert_close(old.kl(cur), torch.zeros(8), atol=1e-5, rtol=0)
    assert torch.isfinite(cur.entropy()).all()


def test_gradients_reach_every_head_through_the_ppo_quantities(module):
    obs = torch.rand(8, 32, 32, 3)
    out = module.forward_exploration({Columns.OBS: obs})
    module.zero_grad()
    train = module.forward_train({Columns.OBS: obs, Columns.ACTIONS: out[Columns.ACTIONS]})
    dist = module.get_train_action_dist_cls().from_logits(train[Columns.ACTION_DIST_INPUTS])
    values = module.compute_values({Columns.OBS: obs}, embeddings=train[Columns.EMBEDDINGS])
    (dist.logp(out[Columns.ACTIONS]).sum() + dist.entropy().sum() + values.sum()).backward()
    for name in ("encoder.0.weight", "gru.weight_hh", "step_logits.weight", "param_head.weight", "value_head.weight"):
        grad = dict(module.net.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name


def test_inference_is_greedy_and_deterministic(module):
    obs = torch.rand(4, 32, 32, 3)
    a = module.forward_inference({Columns.OBS: obs})[Columns.ACTIONS]
    b = module.forward_inference({Columns.OBS: obs})[Columns.ACTIONS]
    assert torch.equal(a["modules"], b["modules"]) and torch.equal(a["params"], b["params"])


def test_model_config_reaches_the_network():
    m = build(image_blind=True, allow_repeats=True, hidden=8)
    assert m.net.image_blind and m.net.allow_repeats and m.net.value_head.in_features == 8
    m = build(param_learning="pathwise", param_stats=True, hidden=8)
    assert m.net.param_stats and m.net.param_out.in_features == 8 + 6


def test_sampling_from_distribution_inputs_alone_is_refused(module):
    out = module.forward_exploration({Columns.OBS: torch.rand(2, 32, 32, 3)})
    dist = module.get_exploration_action_dist_cls().from_logits(out[Columns.ACTION_DIST_INPUTS])
    with pytest.raises(NotImplementedError, match="autoregressively"):
        dist.sample()


def test_wrong_spaces_are_rejected_with_a_clear_error():
    spec = RLModuleSpec(module_class=SequencePolicyModule, observation_space=OBS,
                        action_space=spaces.Discrete(3), model_config={})
    with pytest.raises(ValueError, match="Dict\\(modules=MultiDiscrete, params=Box\\)"):
        spec.build()
