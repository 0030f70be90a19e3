"""The one function that owns RLlib's builder chain: experiment `Config` -> `PPOConfig`."""

from __future__ import annotations

from typing import Any

from ray.rllib.algorithms.ppo import PPOConfig
from ray.rllib.core.rl_module.rl_module import RLModuleSpec
from ray.tune.registry import register_env

from envs.factory import RLLIB_ENV_ID, make_env
from posisp_dist.config import Config
from posisp_dist.data.transport import Shipment
from posisp_dist.policy.rl_module import SequencePolicyModule
from posisp_dist.train.callbacks import ISPCallbacks
from posisp_dist.train.overlap import OverlappingPPO
from posisp_dist.train.pathwise import ONE_STEP_EPISODES, PathwisePPOLearner, learner_connector

SAMPLE_TIMEOUT_S = 3600.0  # one sampling round may take this long before RLlib gives up on it


def env_config(
    cfg: Config, split: str = "train", shipment: Shipment | None = None, data_errors: Any = None
) -> dict[str, Any]:
    """What each EnvRunner receives: the whole (resolved) config as JSON-able data, with
    `data.transport: object_store` the object-store handles of the shards and task weights, and the run's mailbox
    for data errors (`train/endings.py`)."""
    out: dict[str, Any] = {"config": cfg.model_dump(mode="json"), "split": split}
    if shipment is not None:
        out["shipment"] = shipment
    if data_errors is not None:
        out["data_errors"] = data_errors
    return out


def probe_registry_identity(cfg: Config) -> list[float]:
    """The normalised identity parameters of the configured modules: where the pathwise parameter network starts."""
    from posisp_dist.isp.catalogue import registry_for

    return registry_for(cfg.isp.modules).identity_normalised().tolist()


def build_algo_config(cfg: Config, shipment: Shipment | None = None, data_errors: Any = None) -> PPOConfig:
    """Sequence-level PPO: one action = one whole pipeline, EnvRunners run batched vector envs; `shipment`
    (`data.transport.ship`) replaces their disk reads, `data_errors` (`train.endings`) gets their data errors."""
    register_env(RLLIB_ENV_ID, make_env)
    probe = make_env(env_config(cfg))  # spaces only: the data loads lazily at the first reset
    ppo, train = cfg.ppo, cfg.train
    pathwise = cfg.policy.param_learning == "pathwise"
    model_config = {**cfg.policy.model_dump(), "param_init": probe_registry_identity(cfg)}
    return (
        PPOConfig(algo_class=OverlappingPPO if train.overlap else None)
        .environment(
            RLLIB_ENV_ID,
            env_config=env_config(cfg, shipment=shipment, data_errors=data_errors),
            observation_space=probe.observation_space,
            action_space=probe.action_space,
            normalize_actions=False,  # params are already normalised to Box[0, 1]: no unsquashing
            clip_actions=False,
        )
        .env_runners(
            num_env_runners=train.num_env_runners,
            num_envs_per_env_runner=cfg.env.num_envs_per_runner,
            gym_env_vectorize_mode="vector_entry_point",  # our batched vector env: one ISP call per step
            num_cpus_per_env_runner=train.num_cpus_per_env_runner,
            num_gpus_per_env_runner=train.num_gpus_per_env_runner,
            custom_resources_per_env_runner=dict(train.env_runner_resources),  # placement on chosen nodes
            rollout_fragment_length="auto",
            # wait for every EnvRunner's round: RLlib's default (60 s) returns an empty batch from a slow round on
            # a busy machine, which wastes the iteration and makes training depend on the machine's load
            sample_timeout_s=SAMPLE_TIMEOUT_S,
        )
        .learners(
            num_learners=0,
            num_gpus_per_learner=train.num_gpus_per_learner,
            learner_class=PathwisePPOLearner,  # RLlib's PPO learner; + the pathwise term for the parameters
            learner_connector=learner_connector if pathwise else None,
            # ppo.advantages: terminal: a whole pipeline per episode, the advantage is the reward minus the
            # EnvRunner's value (no bootstrap rows, no value forward on the learner)
            learner_config_dict={ONE_STEP_EPISODES: ppo.advantages == "terminal"},
        )
        .training(
            lr=ppo.lr,
            gamma=ppo.gamma,
            lambda_=ppo.gae_lambda,
            clip_param=ppo.clip_coef,
            vf_loss_coeff=ppo.vf_coef,
            entropy_coeff=ppo.ent_coef,
            use_kl_loss=ppo.kl_coef > 0,
            kl_coeff=ppo.kl_coef,
            kl_target=ppo.kl_target,
            train_batch_size_per_learner=ppo.train_batch_size,
            minibatch_size=ppo.minibatch_size,
            num_epochs=ppo.num_epochs,
            grad_clip=ppo.grad_clip,
            vf_clip_param=ppo.vf_clip,
        )
        .rl_module(rl_module_spec=RLModuleSpec(module_class=SequencePolicyModule, model_config=model_config))
        .callbacks(ISPCallbacks)
        .fault_tolerance(restart_failed_env_runners=True)
        .debugging(seed=cfg.seed, log_level="WARN")
    )
