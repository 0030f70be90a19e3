"""The RLlib wiring: every config builds its PPOConfig; one-step advantages are reward - value (the
sequence env's own learner connector piece, the same numbers as RLlib's GAE); EnvRunners bind their data
shards from the worker index."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import REPO

from posisp_dist.config import load_config
from posisp_dist.policy import SequencePolicyModule

CONFIGS = sorted(p for p in (REPO / "configs").glob("*.yaml") if not p.name.startswith("compare"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_every_config_builds_its_ppo_config(path):
    from posisp_dist.train.algo_config import build_algo_config

    cfg = load_config(path)
    algo = build_algo_config(cfg)
    assert algo.rl_module_spec.module_class is SequencePolicyModule
    assert algo.gym_env_vectorize_mode == "vector_entry_point"  # batched ISP calls, not one env at a time
    assert not algo.normalize_actions and not algo.clip_actions  # params stay in Box[0, 1]
    assert algo.train_batch_size_per_learner == cfg.ppo.train_batch_size
    assert algo.clip_param == cfg.ppo.clip_coef and algo.lambda_ == cfg.ppo.gae_lambda
    assert algo.num_env_runners == cfg.train.num_env_runners
    assert algo.num_envs_per_env_runner == cfg.env.num_envs_per_runner
    assert algo.sample_timeout_s >= 600  # a slow round on a busy machine is waited for, not dropped as empty
    steps = 1 if cfg.env.kind == "stepwise" else cfg.isp.max_len  # step-wise: one module per action
    assert algo.action_space["modules"].nvec.tolist() == [len(cfg.isp.modules) + 1] * steps


def tiny_algo_config(tiny_cfg):
    from posisp_dist.train.algo_config import build_algo_config

    raw = tiny_cfg.model_dump(mode="json")
    raw["env"].update(preview_size=16, num_envs_per_runner=8)
    raw["ppo"].update(train_batch_size=32, minibatch_size=32)
    raw["train"]["num_env_runners"] = 0
    return build_algo_config(type(tiny_cfg).model_validate(raw))


def with_ppo(cfg, **ppo):
    raw = cfg.model_dump(mode="json")
    raw["ppo"].update(ppo)
    return type(cfg).model_validate(raw)


def learner_and_episodes(cfg, timesteps: int = 16):
    """A fresh learner holding the EnvRunner's weights, and that runner's episodes."""
    from ray.rllib.env.single_agent_env_runner import SingleAgentEnvRunner

    algo = tiny_algo_config(cfg)
    runner = SingleAgentEnvRunner(config=algo)
    episodes = runner.sample(num_timesteps=timesteps)
    learner = algo.build_learner()
    learner.module["default_policy"].set_state(runner.module.get_state())
    return learner, episodes


def advantages_batch(learner, episodes):
    """The train batch the learner's own pipeline (the one `Learner.update` runs on episodes) makes."""
    pipeline = learner._learner_connector  # test-only look inside
    return pipeline(rl_module=learner.module, batch={}, episodes=episodes, explore=False, shared_data={})[
        "default_policy"]


@pytest.mark.parametrize("advantages", ["gae", "terminal"])
def test_one_step_advantage_is_reward_minus_the_learners_value(tiny_cfg, tiny_data, tiny_task, advantages):
    """The sequence env's episodes are one terminal step each. RLlib's GAE (`ppo.advantages: gae`, its
    bootstrap rows masked out) and `TerminalAdvantages` (`terminal`: no bootstrap rows, the EnvRunner's V(s),
    equal to the learner's) give the real rows value target = reward and advantage = reward - V(s); GAE
    standardises over its bootstrap rows too, `terminal` over the real rows only."""
    from ray.rllib.connectors.learner import AddOneTsToEpisodesAndTruncate, GeneralAdvantageEstimation
    from ray.rllib.core.columns import Columns

    from posisp_dist.train.pathwise import TerminalAdvantages

    learner, episodes = learner_and_episodes(with_ppo(tiny_cfg, advantages=advantages))
    assert all(len(e) == 1 and e.is_terminated for e in episodes)  # one action = one whole pipeline
    kinds = [type(c) for c in learner._learner_connector.connectors]
    b = advantages_batch(learner, episodes)
    real = np.asarray(b[Columns.LOSS_MASK], bool) if Columns.LOSS_MASK in b else np.ones(len(b[Columns.REWARDS]), bool)
    with torch.no_grad():
        values = learner.module["default_policy"].compute_values({Columns.OBS: torch.as_tensor(b[Columns.OBS])})
    rewards, values, adv = np.asarray(b[Columns.REWARDS])[real], values.numpy()[real], np.asarray(b[Columns.ADVANTAGES])
    np.testing.assert_allclose(np.asarray(b[Columns.VALUE_TARGETS])[real], rewards, atol=1e-6)  # no bootstrap
    raw = rewards - values
    assert real.sum() == len(episodes) and np.abs(rewards).sum() > 0 and np.std(raw) > 0
    if advantages == "gae":
        assert AddOneTsToEpisodesAndTruncate in kinds and GeneralAdvantageEstimation in kinds
        assert len(real) == 2 * len(episodes)  # one bootstrap row per episode, masked out of the loss
        assert np.corrcoef(adv[real], raw)[0, 1] > 0.999  # an affine map of reward - V(s) (stats over all rows)
    else:
        assert kinds[-1] is TerminalAdvantages
        assert AddOneTsToEpisodesAndTruncate not in kinds and GeneralAdvantageEstimation not in kinds
        torch.testing.assert_close(torch.as_tensor(b[Columns.VF_PREDS]), torch.as_tensor(values), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(adv, (raw - raw.mean()) / max(1e-4, raw.std()), atol=1e-5)


def with_k(cfg, k: int):
    raw = cfg.model_dump(mode="json")
    raw["env"]["pipelines_per_image"] = k
    raw["ppo"]["advantages"] = "terminal"
    return type(cfg).model_validate(raw)


def test_k_pipelines_per_image_are_scored_against_each_other(tiny_cfg, tiny_data, tiny_task):
    """`env.pipelines_per_image: 4`: each drawn image runs through 4 sampled pipelines in the same step, and each
    pipeline's advantage is its reward minus the mean reward of the image's other 3 (leave-one-out), standardised
    over the batch; the value target stays the reward. One distinct image per group is counted."""
    from ray.rllib.core.columns import Columns

    from envs.sequence_isp import FIRST_OF_IMAGE, GROUP

    learner, episodes = learner_and_episodes(with_k(tiny_cfg, 4), timesteps=32)
    infos = [e.get_infos(-1) for e in episodes]
    groups = np.array([i[GROUP] for i in infos])
    ids, counts = np.unique(groups, return_counts=True)
    assert len(episodes) == 32 and (counts == 4).all()  # 8 images x 4 pipelines
    obs = np.stack([e.get_observations(0) for e in episodes])
    firsts = np.array([bool(i[FIRST_OF_IMAGE]) for i in infos])
    assert all(firsts[groups == g].sum() == 1 for g in ids)  # one distinct image per group
    ref = np.array([i["ref_score"] for i in infos])
    assert all(np.ptp(ref[groups == g]) == 0 for g in ids)  # the group's pipelines share the image's reference
    assert all((obs[groups == g] == obs[groups == g][0]).all() for g in ids)  # one image per group
    assert len({obs[groups == g][0].tobytes() for g in ids}) > 1  # and images, not one image, drawn
    b = advantages_batch(learner, episodes)
    rewards, adv = np.asarray(b[Columns.REWARDS], np.float64), np.asarray(b[Columns.ADVANTAGES], np.float64)
    np.testing.assert_allclose(np.asarray(b[Columns.VALUE_TARGETS]), rewards, atol=1e-6)
    sums = {g: rewards[groups == g].sum() for g in ids}
    raw = np.array([r - (sums[g] - r) / 3 for r, g in zip(rewards, groups, strict=True)])
    assert np.std(raw) > 0
    np.testing.assert_allclose(adv, (raw - raw.mean()) / max(1e-4, raw.std()), atol=1e-4)
    with pytest.raises(ValueError, match="multiple of env.pipelines_per_image"):
        raw_cfg = with_k(tiny_cfg, 1).model_dump(mode="json")
        raw_cfg["env"].update(pipelines_per_image=3, num_envs_per_runner=16)
        type(tiny_cfg).model_validate(raw_cfg)
    with pytest.raises(ValueError, match="needs ppo.advantages: terminal"):
        raw_cfg = with_k(tiny_cfg, 2).model_dump(mode="json")
        raw_cfg["ppo"]["advantages"] = "gae"
        type(tiny_cfg).model_validate(raw_cfg)


def test_terminal_advantages_refuse_multi_step_episodes_and_configs(tiny_cfg, tiny_data, tiny_task):
    """The step-wise env keeps RLlib's GAE: its config refuses `terminal`, and given multi-step episodes
    `TerminalAdvantages` says why not."""
    from ray.rllib.connectors.learner import GeneralAdvantageEstimation
    from ray.rllib.env.single_agent_env_runner import SingleAgentEnvRunner

    from posisp_dist.train.pathwise import TerminalAdvantages

    raw = tiny_cfg.model_dump(mode="json")
    raw["env"]["kind"] = "stepwise"
    stepwise = type(tiny_cfg).model_validate(raw)
    with pytest.raises(ValueError, match="terminal is for env.kind: sequence"):
        with_ppo(stepwise, advantages="terminal")
    algo = tiny_algo_config(stepwise)
    learner = algo.build_learner()
    assert any(type(c) is GeneralAdvantageEstimation for c in learner._learner_connector.connectors)
    episodes = SingleAgentEnvRunner(config=algo).sample(num_timesteps=32)
    assert max(len(e) for e in episodes) > 1
    with pytest.raises(ValueError, match="one terminal step"):
        TerminalAdvantages()(rl_module=learner.module, batch={}, episodes=episodes)


def test_env_runners_bind_their_own_data_shards(tiny_cfg, tiny_data):
    from ray.rllib.env.env_context import EnvContext

    from envs.factory import make_env
    from posisp_dist.data.shards import RawDataset
    from posisp_dist.train.algo_config import env_config
    from posisp_dist.train.callbacks import ISPCallbacks

    n_shards = len(RawDataset(tiny_data, "train").shard_paths)
    assert n_shards >= 2
    seen = []
    for worker in (1, 2):  # RLlib's remote EnvRunners are numbered from 1
        env = make_env({**env_config(tiny_cfg), "num_envs": 4})  # a vector entry point gets a plain dict
        ctx = EnvContext({}, worker_index=worker, num_workers=2)
        ISPCallbacks().on_environment_created(env_runner=None, env=env, env_context=ctx)
        env.reset(seed=0)
        seen.append(set(env.core.batch.ids.tolist()))
        assert env.source.shards() == list(range(worker - 1, n_shards, 2))
    assert seen[0] and seen[1] and not seen[0] & seen[1]  # disjoint images
    single = make_env(EnvContext(env_config(tiny_cfg), worker_index=2, num_workers=2))
    assert single.source.shards() == list(range(1, n_shards, 2))


def test_pathwise_gradient_reaches_the_parameter_network_as_the_task_loss_gradient(tiny_cfg, tiny_data, tiny_task):
    """EnvRunner -> episode infos -> learner connector -> surrogate: the parameter network's gradient equals
    the gradient of the mean task loss taken directly through the torch twin and the task model, so each
    timestep's `param_grad` lines up with its own observation and pipeline."""
    from ray.rllib.core.columns import Columns
    from ray.rllib.env.single_agent_env_runner import SingleAgentEnvRunner

    from posisp_dist.isp.torch_twin import brightness_penalty, run_pipelines
    from posisp_dist.tasks.base import to_torch_nchw
    from posisp_dist.train.pathwise import PARAM_GRAD, pathwise_surrogate

    raw = tiny_cfg.model_dump(mode="json")
    raw["policy"]["param_learning"] = "pathwise"
    algo = tiny_algo_config(type(tiny_cfg).model_validate(raw))
    runner = SingleAgentEnvRunner(config=algo)
    episodes = runner.sample(num_timesteps=16)
    core = runner.env.unwrapped.core
    learner = algo.build_learner()
    module = learner.module["default_policy"]
    module.set_state(runner.module.get_state())  # the runner's copy of the weights produced the gradients
    pipeline = algo.build_learner_connector(input_observation_space=None, input_action_space=None)
    b = pipeline(rl_module=learner.module, batch={}, episodes=episodes, explore=False, shared_data={})["default_policy"]
    g = torch.as_tensor(np.asarray(b[PARAM_GRAD]))
    assert g.shape == (16, core.registry.n_params) and torch.isfinite(g).all() and g.abs().sum() > 0

    obs = torch.as_tensor(np.asarray(b[Columns.OBS]))
    tokens = np.asarray(b[Columns.ACTIONS]["modules"])
    rows = [int(np.nonzero(core.batch.ids == e.get_infos(0)["image_id"])[0][0]) for e in episodes]
    net = module.net

    net.zero_grad()
    pathwise_surrogate(net.params(obs), g).backward()
    via_learner = net.param_out.weight.grad.clone()
    net.zero_grad()
    x = to_torch_nchw(core.images[rows], "cpu")
    out = run_pipelines(x, tokens, net.params(obs), core.registry, core.pathwise_backward)
    loss = tiny_task.loss_and_score(out, [core.targets[r] for r in rows])[0] + brightness_penalty(out)
    loss.mean().backward()
    direct = net.param_out.weight.grad.clone()
    assert direct.abs().sum() > 0
    torch.testing.assert_close(via_learner, direct, rtol=1e-3, atol=1e-6)


def test_a_pathwise_fraction_reaches_the_env_runners_and_keeps_their_metrics_finite(tiny_cfg, tiny_data, tiny_task):
    """`policy.pathwise_fraction: 0.5` in an RLlib EnvRunner: its core backpropagates about half of each step's
    pipelines; the others carry a zero gradient and no loss, and the episode metrics stay finite."""
    from ray.rllib.env.single_agent_env_runner import SingleAgentEnvRunner

    raw = tiny_cfg.model_dump(mode="json")
    raw["policy"].update(param_learning="pathwise", pathwise_fraction=0.5)
    runner = SingleAgentEnvRunner(config=tiny_algo_config(type(tiny_cfg).model_validate(raw)))
    episodes = runner.sample(num_timesteps=16)
    assert runner.env.unwrapped.core.pathwise_fraction == 0.5
    infos = [e.get_infos(-1) for e in episodes]
    real = np.array([np.isfinite(i["pathwise_loss"]) for i in infos])
    assert 0 < real.sum() < len(infos)
    assert not any(np.asarray(i["param_grad"]).any() for i, r in zip(infos, real, strict=True) if not r)
    metrics = runner.get_metrics()
    assert np.isfinite(float(metrics["isp/pathwise_loss"]))
