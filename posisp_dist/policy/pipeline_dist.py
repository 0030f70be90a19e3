"""The action distribution of one whole ISP pipeline, in RLlib's `Distribution` contract.

A pipeline is decoded autoregressively by the policy, so its distribution is carried by the inputs that
decoding produced along the taken path (teacher-forced during training):

    inputs = [ step logits (L * T) | alive flags (L) | Beta parameters (2 * P) ]

`T = M + 1` tokens (M modules and STOP), masked logits already at `MASKED`; `alive[t] = 1` while no STOP
was taken before position t. From these:

    log p(pipeline) = sum_t alive_t * log softmax(logits_t)[token_t] + sum_j log Beta(params_j)
    entropy         = sum_t alive_t * H(softmax(logits_t))           + sum_j H(Beta_j)
    KL(p || q)      = sum_t alive_t * KL(p_t || q_t)                  + sum_j KL(Beta^p_j || Beta^q_j)

The token log-probability is exact. Entropy and KL are the per-step sums along the taken path: their
expectation under the policy is the exact joint entropy / KL (chain rule), which is what PPO averages.

With pathwise parameter learning (`with_params=False`) the parameters are a deterministic function of the
image, trained by the task loss's gradient and not by PPO: the inputs end after the alive flags and the
distribution is the sequence's alone (the Beta terms above drop out).
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import torch
from ray.rllib.core.distribution.distribution import Distribution
from torch.distributions import Beta

MASKED = -1e9  # finite "minus infinity": keeps 0 * logit products (entropy, KL) free of NaN
BETA_EPS = 1e-6  # keep Beta log-probs finite at the closed ends of Box[0, 1]


def beta_from_raw(raw: torch.Tensor) -> Beta:
    """(..., 2P) unconstrained -> Beta(alpha, beta) with alpha, beta >= 1 (unimodal, finite at 0 and 1)."""
    a, b = raw.chunk(2, dim=-1)
    return Beta(torch.nn.functional.softplus(a) + 1.0, torch.nn.functional.softplus(b) + 1.0)


def alive_mask(tokens: torch.Tensor, stop: int) -> torch.Tensor:
    """(B, L) float: 1 at positions reached before any STOP (the first STOP itself is alive)."""
    stopped = (tokens == stop).long().cumsum(dim=1)
    return ((stopped - (tokens == stop).long()) == 0).float()


class PipelineDistribution(Distribution):
    """Joint distribution of (module tokens, normalised parameters) of a pipeline; see module docstring."""

    def __init__(self, logits: torch.Tensor, alive: torch.Tensor, beta_raw: torch.Tensor | None) -> None:
        super().__init__()
        self.logits, self.alive, self.beta_raw = logits, alive, beta_raw  # (B, L, T), (B, L), (B, 2P) or None
        self.log_probs = torch.log_softmax(logits, dim=-1)
        self.params_dist = beta_from_raw(beta_raw) if beta_raw is not None else None

    @classmethod
    def from_logits(
        cls, logits: torch.Tensor, max_len: int = 0, n_tokens: int = 0, with_params: bool = True, **kwargs: Any
    ):
        """Split the flat inputs; `max_len` (L), `n_tokens` (T) and `with_params` come from
        `get_partial_dist_cls`."""
        if max_len <= 0 or n_tokens <= 0:
            raise ValueError("PipelineDistribution needs max_len and n_tokens (use get_partial_dist_cls)")
        lt = max_len * n_tokens
        step = logits[..., :lt].reshape(*logits.shape[:-1], max_len, n_tokens)
        return cls(step, logits[..., lt : lt + max_len], logits[..., lt + max_len :] if with_params else None)

    @staticmethod
    def pack(logits: torch.Tensor, alive: torch.Tensor, beta_raw: torch.Tensor | None) -> torch.Tensor:
        """Inverse of `from_logits`: the flat `ACTION_DIST_INPUTS` tensor."""
        parts = [logits.flatten(start_dim=-2), alive] + ([beta_raw] if beta_raw is not None else [])
        return torch.cat(parts, dim=-1)

    def token_logp(self, tokens: torch.Tensor) -> torch.Tensor:
        chosen = self.log_probs.gather(-1, tokens.long().unsqueeze(-1)).squeeze(-1)
        return (chosen * self.alive).sum(-1)

    def logp(self, value: dict[str, torch.Tensor], **kwargs: Any) -> torch.Tensor:
        if self.params_dist is None:
            return self.token_logp(value["modules"])
        params = value["params"].clamp(BETA_EPS, 1.0 - BETA_EPS)
        return self.token_logp(value["modules"]) + self.params_dist.log_prob(params).sum(-1)

    def token_entropy(self) -> torch.Tensor:
        step = -(self.log_probs.exp() * self.log_probs).sum(-1)
        return (step * self.alive).sum(-1)

    def entropy(self, **kwargs: Any) -> torch.Tensor:
        if self.params_dist is None:
            return self.token_entropy()
        return self.token_entropy() + self.params_dist.entropy().sum(-1)

    def kl(self, other: PipelineDistribution, **kwargs: Any) -> torch.Tensor:
        step = (self.log_probs.exp() * (self.log_probs - other.log_probs)).sum(-1)
        if self.params_dist is None or other.params_dist is None:
            return (step * self.alive).sum(-1)
        beta = torch.distributions.kl_divergence(self.params_dist, other.params_dist).sum(-1)
        return (step * self.alive).sum(-1) + beta

    def sample(self, **kwargs: Any):
        raise NotImplementedError(
            "a pipeline is decoded autoregressively by SequencePolicyModule, which returns Columns.ACTIONS; "
            "its distribution inputs only score the path already taken"
        )

    rsample = sample

    @staticmethod
    def required_input_dim(space: gym.Space, with_params: bool = True, **kwargs: Any) -> int:
        """L * (M + 1) + L [+ 2P] for a `sequence_action_space`."""
        mods, params = space["modules"], space["params"]
        return int(mods.shape[0] * mods.nvec[0] + mods.shape[0] + (2 * params.shape[0] if with_params else 0))
