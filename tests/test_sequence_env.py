"""`posisp/SequenceISP-v0`: Gymnasium's checker, seeding, reward definition, bad actions, vector form."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from envs import SequenceISPEnv, SequenceISPVectorEnv
from envs.core import ISPTaskCore, brightness_penalty
from posisp_dist.data.shards import RawDataset
from posisp_dist.isp import DEFAULT_REGISTRY as R

M, P = R.n_modules, R.n_params  # STOP is id M


@pytest.fixture(scope="module")
def core(tiny_data, tiny_task):
    return ISPTaskCore(RawDataset(tiny_data, "val").load(), tiny_task, R, preview_size=32)


def test_check_env_passes_without_warnings(core):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_env(SequenceISPEnv(core, max_len=4), skip_render_check=True)
    assert [str(w.message) for w in caught] == []


def test_same_seed_same_rollout(core):
    def rollout(seed):
        env = SequenceISPEnv(core, max_len=4)
        env.action_space.seed(seed)
        out = []
        for ep in range(3):
            obs, info = env.reset(seed=seed + ep)
            _, rew, term, trunc, step_info = env.step(env.action_space.sample())
            out.append((info["image_id"], float(obs.sum()), rew, term, trunc, step_info["pipeline"]))
        return out

    assert rollout(7) == rollout(7)
    assert rollout(7) != rollout(8)


def test_reward_definition_and_stop_only(core):
    env = SequenceISPEnv(core, max_len=4)
    env.reset(seed=0)
    stop = {"modules": np.full(4, R.n_modules), "params": np.full(R.n_params, 0.5, np.float32)}
    _, rew, term, _, info = env.step(stop)
    assert rew == 0.0 and term and info["length"] == 0 and info["cost"] == 0.0
    env.reset(seed=0)
    action = {"modules": np.array([0, 0, R.n_modules, 1]), "params": np.full(R.n_params, 0.75, np.float32)}
    _, rew, _, _, info = env.step(action)  # exposure twice (+1.75 EV each), then STOP: gamma never runs
    assert info["pipeline"]["modules"] == ["exposure", "exposure"]
    assert info["cost"] == pytest.approx(2 * 1.7)
    assert info["pipeline"]["params"][0]["ev"] == pytest.approx(1.75)
    # recompute the reward independently: run the pipeline by hand, score it, apply the penalty terms
    env.reset(seed=0)
    idx = env._idx  # the same image the step above used (same seed)
    once = np.clip(core.images[idx : idx + 1] * 2.0**1.75, 0, 1)
    out = np.clip(once * 2.0**1.75, 0, 1).astype(np.float32)
    score = float(core.task.score(out, [core.targets[idx]])[0])
    pen = brightness_penalty(out, np)[0] - brightness_penalty(core.images[idx : idx + 1], np)[0]
    assert info["task_score"] == pytest.approx(score, abs=1e-5)
    assert rew == pytest.approx(score - float(core.ref_score[idx]) - pen, abs=1e-5)


def test_cost_lambda_charges_modules(tiny_data, tiny_task):
    batch = RawDataset(tiny_data, "val").load()
    free = ISPTaskCore(batch, tiny_task, R, preview_size=32, brightness=False)
    paid = ISPTaskCore(batch, tiny_task, R, preview_size=32, brightness=False, cost_lambda=0.1)
    tokens, params = np.array([[3, 4, R.n_modules]]), np.full((1, R.n_params), 0.5, np.float32)
    a, b = free.evaluate(np.array([0]), tokens, params), paid.evaluate(np.array([0]), tokens, params)
    assert a.reward[0] - b.reward[0] == pytest.approx(0.1 * (6.3 + 10.0))  # sharpen's and denoise's costs


@pytest.mark.parametrize(
    "action, match",
    [
        ({"modules": np.zeros(4, int), "params": np.full(P, np.nan, np.float32)}, "NaN"),
        ({"modules": np.zeros(4, int), "params": np.full(P, 1.5, np.float32)}, r"\[0, 1\]"),
        ({"modules": np.zeros(3, int), "params": np.zeros(P, np.float32)}, r"shaped \(4,\)"),
        ({"modules": np.zeros(4, int), "params": np.zeros(P - 1, np.float32)}, rf"shaped \({P},\)"),
        ({"modules": np.full(4, M + 1), "params": np.zeros(P, np.float32)}, rf"ids must lie in \[0, {M}\]"),
    ],
)
def test_bad_actions_are_rejected(core, action, match):
    env = SequenceISPEnv(core, max_len=4)
    env.reset(seed=0)
    with pytest.raises(ValueError, match=match):
        env.step(action)


def test_step_without_reset_raises(core):
    with pytest.raises(RuntimeError, match="reset"):
        SequenceISPEnv(core, max_len=4).step({"modules": np.zeros(4, int), "params": np.zeros(P, np.float32)})


def test_vector_env_batches_one_executor_and_task_call(core):
    venv = SequenceISPVectorEnv(core, num_envs=6, max_len=4)
    obs, info = venv.reset(seed=3)
    assert obs.shape == (6, 32, 32, 3) and venv.observation_space.contains(obs)
    venv.action_space.seed(3)
    actions = venv.action_space.sample()
    calls, task_calls = core.executor.stats.batches, core.task_calls
    _, rew, term, trunc, step_info = venv.step(actions)
    assert core.executor.stats.batches == calls + 1 and core.task_calls == task_calls + 1
    assert rew.shape == (6,) and term.all() and not trunc.any()
    # the same pipelines through the single env give the same rewards
    for i in range(6):
        single = core.evaluate(
            np.array([info["image_id"][i] % 10_000_000]), actions["modules"][i : i + 1], actions["params"][i : i + 1]
        )
        assert single.reward[0] == pytest.approx(rew[i], abs=1e-5)
    _, rew2, term2, _, _ = venv.step(actions)  # NEXT_STEP autoreset
    assert not term2.any() and (rew2 == 0).all()


def test_a_batch_of_stop_only_pipelines_has_zero_parameter_gradient(core):
    """The pathwise step on pipelines that run no module: reward 0 and a zero gradient (no path to the params),
    not an autograd error that ends the EnvRunner's round."""
    stop = np.full((3, 4), R.n_modules)
    res = core.evaluate(np.arange(3), stop, np.full((3, P), 0.5, np.float32), param_grad=True)
    np.testing.assert_array_equal(res.reward, 0.0)
    assert res.param_grad.shape == (3, P) and not res.param_grad.any()
    mixed = stop.copy()
    mixed[1, 0] = 0  # one exposure: that row's gradient is real, the others stay 0
    res = core.evaluate(np.arange(3), mixed, np.full((3, P), 0.5, np.float32), param_grad=True)
    assert res.param_grad[1].any() and not res.param_grad[[0, 2]].any()


def test_a_pathwise_fraction_backpropagates_a_subset_and_keeps_the_batch_mean_unbiased(tiny_data, tiny_task):
    """`policy.pathwise_fraction`: of 8 pipelines, 4 go through the twin and the task loss's backward pass; their
    gradients are the full step's times 8 / 4, the other 4 get 0 (and a NaN loss), while every pipeline keeps the
    reward, score and output it gets when all 8 are backpropagated."""
    batch = RawDataset(tiny_data, "val").load()
    full = ISPTaskCore(batch, tiny_task, R, preview_size=32)
    half = ISPTaskCore(batch, tiny_task, R, preview_size=32, pathwise_fraction=0.5, seed=3)
    rng = np.random.default_rng(0)
    n = 8
    tokens = np.stack([rng.permutation(M)[:4] for _ in range(n)])
    params = rng.uniform(0.3, 0.7, (n, P)).astype(np.float32)
    idx = np.arange(n) % len(full)
    a = full.evaluate(idx, tokens, params, param_grad=True, keep_output=True)
    backward = half.task_backward_images
    b = half.evaluate(idx, tokens, params, param_grad=True, keep_output=True)
    assert half.task_backward_images - backward == 4
    chosen = np.isfinite(b.pathwise_loss)
    assert chosen.sum() == 4
    np.testing.assert_allclose(b.param_grad[chosen], 2.0 * a.param_grad[chosen], rtol=1e-4, atol=1e-6)
    assert not b.param_grad[~chosen].any() and a.param_grad[~chosen].any()
    np.testing.assert_allclose(b.pathwise_loss[chosen], a.pathwise_loss[chosen], rtol=1e-5)
    np.testing.assert_allclose(b.reward, a.reward, atol=1e-4)
    np.testing.assert_allclose(b.output, a.output, atol=1e-4)
    later = [half.evaluate(idx, tokens, params, param_grad=True).pathwise_loss for _ in range(4)]
    assert np.isfinite(np.stack(later)).any(0).sum() > 4  # each step draws its own subset
    with pytest.raises(ValueError, match="pathwise_fraction"):
        ISPTaskCore(batch, tiny_task, R, preview_size=32, pathwise_fraction=0.0)
