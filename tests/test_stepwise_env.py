"""`posisp/StepwiseISP-v0`: Gymnasium's checker, seeding, telescoping rewards, STOP, AdaptiveISP compute."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env

from envs import SequenceISPEnv, StepwiseISPEnv, StepwiseISPVectorEnv
from envs.core import ISPTaskCore
from posisp_dist.data.shards import RawDataset
from posisp_dist.isp import DEFAULT_REGISTRY as R

M, K = R.n_modules, 4


@pytest.fixture(scope="module")
def core(tiny_data, tiny_task):
    return ISPTaskCore(RawDataset(tiny_data, "val").load(), tiny_task, R, preview_size=16)


def act(module: int, params: np.ndarray) -> dict:
    return {"modules": np.array([module]), "params": params}


def test_check_env_passes_without_warnings(core):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_env(StepwiseISPEnv(core, max_steps=K), skip_render_check=True)
    assert [str(w.message) for w in caught] == []


def test_same_seed_same_rollout(core):
    def rollout(seed):
        env = StepwiseISPEnv(core, max_steps=K)
        env.action_space.seed(seed)
        obs, _ = env.reset(seed=seed)
        out, done = [float(obs.sum())], False
        while not done:
            obs, rew, done, _, _ = env.step(env.action_space.sample())
            out.append((float(obs.sum()), rew))
        return out

    assert rollout(3) == rollout(3)
    assert rollout(3) != rollout(4)  # the seed decides the rollout: not a constant


@pytest.fixture(scope="module")
def dark_core(tiny_data, tiny_task):  # the brightness penalty off: neither env may count it
    return ISPTaskCore(RawDataset(tiny_data, "val").load(), tiny_task, R, preview_size=16, brightness=False)


@pytest.mark.parametrize("which", ["core", "dark_core"])
def test_step_rewards_add_up_to_the_sequence_reward_of_the_same_pipeline(which, request):
    core = request.getfixturevalue(which)
    rng = np.random.default_rng(0)
    params = rng.random(R.n_params).astype(np.float32)
    pipeline = [R.index("exposure"), R.index("gamma"), R.index("contrast")]
    step = StepwiseISPEnv(core, max_steps=K)
    step.reset(seed=5)
    image = step._ep.idx[0]
    total = sum(step.step(act(m, params))[1] for m in pipeline)
    seq = SequenceISPEnv(core, max_len=K)
    seq.reset(seed=5)
    seq._idx = image
    tokens = np.array(pipeline + [M] * (K - len(pipeline)))
    assert total == pytest.approx(seq.step({"modules": tokens, "params": params})[1], abs=1e-5)


def test_stop_ends_the_episode_and_reuse_is_penalised(core):
    params = np.full(R.n_params, 0.5, np.float32)
    env = StepwiseISPEnv(core, max_steps=K, reuse_penalty=1.0)
    env.reset(seed=0)
    _, r_first, done, _, _ = env.step(act(R.index("desaturation"), params))
    _, r_again, done, _, _ = env.step(act(R.index("desaturation"), params))  # alpha 0.5 twice: image changes
    assert not done
    assert r_again < 0 and env._ep.used[0, R.index("desaturation")]
    obs, r_stop, done, _, _ = env.step(act(M, params))
    assert done and r_stop == 0.0
    assert obs[0, 0, 3] == pytest.approx(3 / K)  # progress plane
    with pytest.raises(RuntimeError, match="reset"):
        env.step(act(0, params))


@pytest.mark.parametrize("all_modules, runs_per_step", [(False, 1), (True, M)])
def test_adaptiveisp_mode_runs_every_module_at_every_step(core, all_modules, runs_per_step):
    n = 6
    vec = StepwiseISPVectorEnv(core, n, max_steps=K, reuse_penalty=0.0, all_modules=all_modules)
    vec.reset(seed=1)
    before = core.executor.stats.module_runs
    params = np.full((n, R.n_params), 0.5, np.float32)
    for k in range(K):  # never STOP: K steps of one module each
        modules = np.full((n, 1), k % M)
        _, _, term, _, _ = vec.step({"modules": modules, "params": params})
    assert term.all()
    assert core.executor.stats.module_runs - before == n * K * runs_per_step  # AdaptiveISP: M x K per image


def test_vector_env_matches_single_envs_and_autoresets(core):
    n = 3
    vec = StepwiseISPVectorEnv(core, n, max_steps=2)
    obs, _ = vec.reset(seed=2)
    assert obs.shape == (n, 16, 16, 4 + M)
    params = np.full((n, R.n_params), 0.5, np.float32)
    _, r1, t1, _, _ = vec.step({"modules": np.array([[0], [M], [1]]), "params": params})
    assert t1.tolist() == [False, True, False] and r1[1] == 0.0
    _, r2, t2, _, _ = vec.step({"modules": np.array([[2], [0], [2]]), "params": params})
    assert t2.tolist() == [True, False, True] and r2[1] == 0.0  # env 1 was only reset (NEXT_STEP)


def test_greedy_rollout_equals_its_composed_pipeline(core):
    from ray.rllib.core.rl_module.rl_module import RLModuleSpec

    from posisp_dist.policy import SequencePolicyModule
    from posisp_dist.trained.inference import stepwise_greedy

    env = StepwiseISPEnv(core, max_steps=K)
    module = RLModuleSpec(module_class=SequencePolicyModule, observation_space=env.observation_space,
                          action_space=env.action_space, model_config={"hidden": 16}).build()
    with torch.no_grad():  # an untrained policy may stop at once; make it pick modules so the check has work
        module.net.step_logits.bias[M] = -5.0
    images = core.images[:8]
    tokens, params, rolled = stepwise_greedy(module, images, core.executor, core.preview_size, K)
    for row in tokens:  # each module at most once, STOP padding after the first STOP
        mods = [t for t in row if t != M]
        assert len(set(mods)) == len(mods) and list(row[: len(mods)]) == mods
    assert (tokens[:, 0] != M).any()  # the untrained policy does pick modules
    # eval re-runs the composed pipeline: it must reproduce what the rollout produced step by step
    np.testing.assert_allclose(core.executor.run(images, tokens, params), rolled, atol=1e-6)


@pytest.mark.parametrize("all_modules", [False, True])
def test_pathwise_step_gradient_is_the_chosen_modules_task_loss_gradient(core, all_modules):
    """With `param_grad` each step's info carries d(task loss after the step)/d(params): on the first step
    it equals the sequence env's gradient for the one-module pipeline on the same image, and it touches
    only the chosen module's parameters; rewards are those of the fast kernels."""
    rng = np.random.default_rng(1)
    params = rng.uniform(0.2, 0.8, R.n_params).astype(np.float32)
    exposure, gamma = R.index("exposure"), R.index("gamma")
    env = StepwiseISPEnv(core, max_steps=K, reuse_penalty=0.0, all_modules=all_modules, param_grad=True)
    plain = StepwiseISPEnv(core, max_steps=K, reuse_penalty=0.0, all_modules=all_modules)
    env.reset(seed=4)
    plain.reset(seed=4)
    image = env._ep.idx[0]
    _, r1, _, _, info1 = env.step(act(exposure, params))
    _, r2, _, _, info2 = env.step(act(gamma, params))
    plain_rewards = [plain.step(act(m, params))[1] for m in (exposure, gamma)]
    np.testing.assert_allclose([r1, r2], plain_rewards, atol=1e-4)

    tokens = np.array([[exposure] + [M] * (K - 1)])
    direct = core.evaluate(np.array([image]), tokens, params[None], K, param_grad=True)
    np.testing.assert_allclose(info1["param_grad"], direct.param_grad[0], rtol=1e-4, atol=1e-6)
    assert info1["pathwise_loss"] == pytest.approx(float(direct.pathwise_loss[0]), rel=1e-5)
    for info, module in ((info1, exposure), (info2, gamma)):
        g = np.asarray(info["param_grad"])
        mine = np.zeros(R.n_params, bool)
        mine[R.param_slice(module)] = True
        assert np.abs(g[mine]).sum() > 0 and not g[~mine].any()
