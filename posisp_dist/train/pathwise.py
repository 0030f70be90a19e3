"""POS-ISP's hybrid learner inside RLlib's contract: PPO for the module sequence, the pathwise gradient
for the parameters.

The EnvRunners already hold the images and the frozen task model. With pathwise learning each step's
pipelines run once through the ISP's differentiable torch twin (values equal to the fast kernels, tested),
and one task-model forward pass gives the terminal reward and, backpropagated, the gradient of each image's
task loss w.r.t. its normalised parameters, `g = dL/dp` (P floats), which travels with the episode as
`infos["param_grad"]` (`envs.core.ISPTaskCore._pathwise`). On the learner:

- `AddParamGradToBatch` (a learner ConnectorV2 piece) puts `g` of every timestep into the train batch;
- `PathwisePPOLearner.compute_loss_for_module` adds `mean(sum_j p_j * stop_grad(g_j))` to PPO's loss, where
  `p` is the parameter network's output on the same observations. Its gradient w.r.t. the network's
  weights is the vector-Jacobian product `g^T dp/dtheta`, i.e. exactly the gradient of the mean task loss
  (the chain rule split across the actor/learner boundary), so the learner runs no ISP and no task model;
- the parameter network has its own Adam optimizer (`policy.pathwise_lr`); PPO's optimizer holds the rest.

Why the gradient and not the images travel: 27 floats per image instead of a full-size image, no copy of
the data on the learner, the same path on a one-machine run, a multi-node cluster without a shared disk
and GPUs (the EnvRunners compute `g` where their images and task model live).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from ray.rllib.algorithms.ppo.torch.ppo_torch_learner import PPOTorchLearner
from ray.rllib.connectors.connector_v2 import ConnectorV2
from ray.rllib.connectors.learner import AddOneTsToEpisodesAndTruncate, GeneralAdvantageEstimation
from ray.rllib.core.columns import Columns
from ray.rllib.utils.annotations import override

from envs.sequence_isp import GROUP
from posisp_dist.policy.rl_module import PATHWISE_PARAMS

PARAM_GRAD = "param_grad"  # infos key and train-batch column: (P,) dL/d(normalised params) per timestep
PATHWISE_OPTIMIZER = "pathwise"
ONE_STEP_EPISODES = "one_step_episodes"  # learner_config_dict key: every episode is one terminal step
GRAD_NORM_KEY, PARAM_MEAN_KEY = "pathwise_grad_norm", "pathwise_param_mean"  # the learner's own results


class AddParamGradToBatch(ConnectorV2):
    """Learner connector piece: `infos[t + 1]["param_grad"]` (the info returned by step t) -> column
    `param_grad` of timestep t, for every timestep RLlib trains on (its bootstrap timestep included)."""

    @override(ConnectorV2)
    def __call__(
        self,
        *,
        rl_module: Any,
        batch: dict[str, Any],
        episodes: list[Any],
        explore: bool | None = None,
        shared_data: dict | None = None,
        **kwargs: Any,
    ) -> Any:
        if PARAM_GRAD in batch:
            return batch
        for episode in self.single_agent_episode_iterator(episodes, agents_that_stepped_only=False):
            n = len(episode)
            infos = episode.get_infos(slice(1, n + 1))
            missing = [t for t, info in enumerate(infos) if PARAM_GRAD not in info]
            if missing:
                raise KeyError(
                    f"episode {episode.id_}: steps {missing} carry no '{PARAM_GRAD}' in their info; the pathwise "
                    "learner needs envs built with param_grad=True (policy.param_learning: pathwise)"
                )
            grads = [np.asarray(info[PARAM_GRAD], np.float32) for info in infos]
            self.add_n_batch_items(batch, PARAM_GRAD, items_to_add=grads, num_items=n, single_agent_episode=episode)
        return batch


class TerminalAdvantages(ConnectorV2):
    """Learner connector piece for one-step episodes (the sequence env: one action is a whole pipeline, its
    reward terminal), in place of RLlib's bootstrap timestep + GAE. With one terminal step the value target is
    the reward and the advantage `r - b`, standardised over the batch as RLlib's GAE does.

    The baseline `b`: where an image ran through K > 1 sampled pipelines in this batch (`env.pipelines_per_image`,
    the steps' `group` info), the mean reward of its other K - 1 pipelines (leave-one-out, as RLOO): the image's
    own difficulty cancels out and no value function has to generalise across images. Otherwise `V(s)`, what the
    EnvRunner's module computed while sampling (`Columns.VF_PREDS`): PPO samples with the weights it then
    updates, so it equals the learner's forward pass, which is skipped (with `train.overlap` it is the value of
    the weights one update older, those that sampled the batch). RLlib's default would also add one
    bootstrap timestep per episode, doubling a batch of one-step episodes for the learner's minibatches."""

    @override(ConnectorV2)
    def __call__(self, *, rl_module: Any, batch: dict[str, Any], episodes: list[Any], **kwargs: Any) -> Any:
        groups = []  # one per episode, in the order the batch's rows were added (RLlib's episode iterator)
        for episode in self.single_agent_episode_iterator(episodes, agents_that_stepped_only=False):
            if len(episode) != 1 or not episode.is_terminated:
                raise ValueError(
                    f"episode {episode.id_} has {len(episode)} steps (terminated={episode.is_terminated}); "
                    f"{ONE_STEP_EPISODES} is for envs whose every episode is one terminal step"
                )
            groups.append(episode.get_infos(-1).get(GROUP, -1 - len(groups)))  # no group: a group of its own
        for module_id, column in batch.items():
            if Columns.VF_PREDS not in column:
                raise KeyError(f"module {module_id!r}: the EnvRunners sent no '{Columns.VF_PREDS}' with the episodes")
            rewards = column[Columns.REWARDS]
            baseline = column[Columns.VF_PREDS].to(rewards.dtype)
            if len(groups) != len(rewards):
                raise ValueError(f"module {module_id!r}: {len(rewards)} batch rows for {len(groups)} one-step episodes")
            group = torch.as_tensor(np.asarray(groups, np.int64), device=rewards.device)
            baseline = leave_one_out(rewards, group, baseline)
            advantages = rewards - baseline
            std = advantages.std(correction=0).clamp_min(1e-4)
            column[Columns.ADVANTAGES] = (advantages - advantages.mean()) / std
            column[Columns.VALUE_TARGETS] = rewards
        return batch


def leave_one_out(rewards: torch.Tensor, group: torch.Tensor, fallback: torch.Tensor) -> torch.Tensor:
    """Each row's baseline: the mean reward of the other rows of its group; `fallback` for a row alone in its
    group."""
    _, inverse, counts = torch.unique(group, return_inverse=True, return_counts=True)
    sums = torch.zeros(len(counts), dtype=rewards.dtype, device=rewards.device).index_add_(0, inverse, rewards)
    n = counts[inverse].to(rewards.dtype)
    others = (sums[inverse] - rewards) / (n - 1).clamp_min(1)
    return torch.where(n > 1, others, fallback)


class PathwisePPOLearner(PPOTorchLearner):
    """RLlib's PPO learner plus the pathwise term for the parameter network (see the module docstring).
    With `param_learning: ppo` it is RLlib's PPO learner unchanged. With `learner_config_dict`'s
    `one_step_episodes` its advantages come from `TerminalAdvantages`."""

    @override(PPOTorchLearner)
    def build(self) -> None:
        super().build()
        if not self.config.learner_config_dict.get(ONE_STEP_EPISODES) or self._learner_connector is None:
            return
        # RLlib's PPOLearner.build has just added these two to the pipeline (the same protected member)
        pipeline = self._learner_connector
        for piece in (AddOneTsToEpisodesAndTruncate, GeneralAdvantageEstimation):
            if not any(type(c) is piece for c in pipeline.connectors):
                raise RuntimeError(f"RLlib's PPO learner pipeline has no {piece.__name__} to replace: check the Ray "
                                   "version against pyproject's pin")
            pipeline.remove(piece)
        pipeline.append(TerminalAdvantages())

    @override(PPOTorchLearner)
    def configure_optimizers_for_module(self, module_id: str, config: Any = None) -> None:
        net = self.module[module_id].unwrapped().net
        if not net.pathwise:
            return super().configure_optimizers_for_module(module_id, config)
        param_net = [*net.param_encoder.parameters(), *net.param_out.parameters()]
        ids = {id(p) for p in param_net}
        rest = [p for p in self.get_parameters(self.module[module_id]) if id(p) not in ids]
        lr = float(self.module[module_id].unwrapped().model_config.get("pathwise_lr", 1e-3))
        self.register_optimizer(
            module_id=module_id, optimizer=torch.optim.Adam(rest), params=rest, lr_or_lr_schedule=config.lr
        )
        self.register_optimizer(
            module_id=module_id,
            optimizer_name=PATHWISE_OPTIMIZER,
            optimizer=torch.optim.Adam(param_net),
            params=param_net,
            lr_or_lr_schedule=lr,
        )

    @override(PPOTorchLearner)
    def compute_loss_for_module(
        self, *, module_id: str, config: Any, batch: dict[str, Any], fwd_out: dict[str, Any]
    ) -> torch.Tensor:
        loss = super().compute_loss_for_module(module_id=module_id, config=config, batch=batch, fwd_out=fwd_out)
        if PATHWISE_PARAMS not in fwd_out:
            return loss
        if PARAM_GRAD not in batch:
            raise KeyError(f"the pathwise learner's batch has no '{PARAM_GRAD}' column (AddParamGradToBatch missing)")
        params, grad = fwd_out[PATHWISE_PARAMS], batch[PARAM_GRAD].to(fwd_out[PATHWISE_PARAMS].dtype)
        if not bool(torch.isfinite(params).all()):
            raise FloatingPointError("the parameter network produced NaN/inf parameters; lower policy.pathwise_lr")
        mask = batch.get(Columns.LOSS_MASK)
        if mask is not None:
            params, grad = params[mask], grad[mask]
        self.metrics.log_dict(
            {
                GRAD_NORM_KEY: grad.norm(dim=-1).mean(),
                PARAM_MEAN_KEY: params.detach().mean(),
            },
            key=module_id,
            window=1,
        )
        return loss + pathwise_surrogate(params, grad)


def pathwise_surrogate(params: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """mean_i sum_j p_ij * stop_grad(g_ij): its gradient w.r.t. whatever produced `params` is the gradient of
    the mean task loss, given g = dL/dp at (the EnvRunner's copy of) these params."""
    return (params * grad.detach()).sum(-1).mean()


def learner_connector(observation_space: Any, action_space: Any) -> list[ConnectorV2]:
    """`PPOConfig.learners(learner_connector=...)`: the pathwise gradients join RLlib's default pipeline."""
    return [AddParamGradToBatch()]
