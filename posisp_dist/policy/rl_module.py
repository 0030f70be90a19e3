"""`SequencePolicyNet` inside RLlib's contract: a `TorchRLModule` with the `ValueFunctionAPI`.

Exploration samples a whole pipeline autoregressively and returns it as `Columns.ACTIONS` with its joint
log-probability; training teacher-forces the stored pipelines through the decoder so that PPO's ratio,
entropy and KL are computed by `PipelineDistribution` on the current weights. Inference is greedy
(argmax tokens, Beta means). The policy sees only spaces, never the environment.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import torch
from ray.rllib.core.columns import Columns
from ray.rllib.core.rl_module.apis.value_function_api import ValueFunctionAPI
from ray.rllib.core.rl_module.rl_module import RLModule
from ray.rllib.core.rl_module.torch.torch_rl_module import TorchRLModule
from ray.rllib.utils.annotations import override

from posisp_dist.policy.pipeline_dist import PipelineDistribution
from posisp_dist.policy.sequence_policy import SequencePolicyNet


def check_spaces(observation_space: gym.Space, action_space: gym.Space) -> tuple[int, int, int]:
    """-> (n_modules, max_len, n_params); raises ValueError when the spaces are not a sequence-ISP pair."""
    ok = (
        isinstance(action_space, gym.spaces.Dict)
        and isinstance(action_space.spaces.get("modules"), gym.spaces.MultiDiscrete)
        and isinstance(action_space.spaces.get("params"), gym.spaces.Box)
        and isinstance(observation_space, gym.spaces.Box)
        and len(observation_space.shape) == 3
        and observation_space.shape[-1] >= 3
    )
    if not ok:
        raise ValueError(
            "SequencePolicyModule needs Box(S, S, 3 [+ state planes]) observations and a "
            f"Dict(modules=MultiDiscrete, params=Box) action space; got {observation_space} and {action_space}"
        )
    nvec = action_space["modules"].nvec
    return int(nvec[0]) - 1, int(nvec.shape[0]), int(action_space["params"].shape[0])


PATHWISE_PARAMS = "pathwise_params"  # forward_train output: (B, P) the parameter network's normalised params


class SequencePolicyModule(TorchRLModule, ValueFunctionAPI):
    """model_config keys: `hidden` (64), `image_blind` (False), `allow_repeats` (False), `param_learning`
    ("ppo" | "pathwise"), `param_init` (normalised start params of the pathwise parameter network), `param_stats`
    (False: whether that network also sees each preview's exposure statistics)."""

    @override(RLModule)
    def setup(self) -> None:
        n_modules, max_len, n_params = check_spaces(self.observation_space, self.action_space)
        cfg = self.model_config or {}
        self.net = SequencePolicyNet(
            n_modules,
            n_params,
            max_len,
            hidden=int(cfg.get("hidden", 64)),
            image_blind=bool(cfg.get("image_blind", False)),
            allow_repeats=bool(cfg.get("allow_repeats", False)),
            state_planes=int(self.observation_space.shape[-1]) - 3,
            param_learning=str(cfg.get("param_learning", "ppo")),
            param_init=cfg.get("param_init"),
            param_stats=bool(cfg.get("param_stats", False)),
        )
        self._dist_cls = PipelineDistribution.get_partial_dist_cls(
            max_len=max_len, n_tokens=n_modules + 1, with_params=not self.net.pathwise
        )

    def _decode(self, batch: dict[str, Any], explore: bool) -> dict[str, Any]:
        action, dist, feat = self.net.act(batch[Columns.OBS], greedy=not explore)
        out = {
            Columns.ACTIONS: action,
            Columns.ACTION_LOGP: dist.logp(action),
            Columns.ACTION_DIST_INPUTS: PipelineDistribution.pack(dist.logits, dist.alive, dist.beta_raw),
        }
        if explore:  # the value of the sampled state, from the features already computed (a linear head)
            out[Columns.VF_PREDS] = self.net.value(feat)
        return out

    @override(TorchRLModule)
    def _forward_inference(self, batch: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        return self._decode(batch, explore=False)

    @override(TorchRLModule)
    def _forward_exploration(self, batch: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        return self._decode(batch, explore=True)

    @override(TorchRLModule)
    def _forward_train(self, batch: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        obs = batch[Columns.OBS]
        _, dist, feat = self.net.act(obs, action=batch[Columns.ACTIONS])  # teacher-forces the stored tokens
        out = {
            Columns.ACTION_DIST_INPUTS: PipelineDistribution.pack(dist.logits, dist.alive, dist.beta_raw),
            Columns.EMBEDDINGS: feat,
        }
        if self.net.pathwise:  # the learner's pathwise term flows through these
            out[PATHWISE_PARAMS] = self.net.params(obs)
        return out

    @override(ValueFunctionAPI)
    def compute_values(self, batch: dict[str, Any], embeddings: Any = None) -> torch.Tensor:
        if embeddings is None:
            embeddings = self.net.features(batch[Columns.OBS])
        return self.net.value(embeddings)

    @override(TorchRLModule)
    def get_inference_action_dist_cls(self) -> type[PipelineDistribution]:
        return self._dist_cls

    @override(TorchRLModule)
    def get_exploration_action_dist_cls(self) -> type[PipelineDistribution]:
        return self._dist_cls

    @override(TorchRLModule)
    def get_train_action_dist_cls(self) -> type[PipelineDistribution]:
        return self._dist_cls
