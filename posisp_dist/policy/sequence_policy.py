"""The POS-ISP sequence policy as one torch module: image encoder -> autoregressive module decoder
(repeats masked, STOP allowed) + a Beta head over all normalised parameters + a value head.

`get_action_and_value(obs, action=None)` mirrors CleanRL: it samples (or scores a given) whole pipeline
and returns its joint log-probability, entropy and the state value. The sequence entropy is the sum of
per-position entropies along the decoded path, an unbiased estimate of the joint entropy.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.distributions import Beta, Categorical


class SequencePolicyNet(nn.Module):
    def __init__(
        self,
        n_modules: int,
        n_params: int,
        max_len: int,
        hidden: int = 64,
        image_blind: bool = False,
        allow_repeats: bool = False,
    ) -> None:
        super().__init__()
        self.n_modules, self.n_params, self.max_len = n_modules, n_params, max_len
        self.stop, self.sos = n_modules, n_modules + 1
        self.image_blind, self.allow_repeats = image_blind, allow_repeats
        self.encoder = nn.Sequential(
            nn.Conv2d(3, 16, 3, 2, 1),
            nn.LeakyReLU(0.2),
            nn.Conv2d(16, 32, 3, 2, 1),
            nn.LeakyReLU(0.2),
            nn.Conv2d(32, 64, 3, 2, 1),
            nn.LeakyReLU(0.2),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(64, hidden),
            nn.ReLU(),
        )
        self.h0 = nn.Linear(hidden, hidden)  # image -> initial decoder state
        self.h0_blind = nn.Parameter(torch.zeros(hidden))  # the paper's image-blind start state
        self.embed = nn.Embedding(n_modules + 2, hidden)  # modules, STOP, SOS
        self.gru = nn.GRUCell(hidden, hidden)
        self.step_logits = nn.Linear(hidden, n_modules + 1)
        self.param_head = nn.Linear(hidden, 2 * n_params)
        self.value_head = nn.Linear(hidden, 1)

    def features(self, obs: torch.Tensor) -> torch.Tensor:
        """obs: (B, S, S, 3) previews in [0, 1] -> (B, hidden)."""
        return self.encoder(obs.permute(0, 3, 1, 2))

    def param_dist(self, feat: torch.Tensor) -> Beta:
        a, b = self.param_head(feat).chunk(2, dim=-1)
        return Beta(nn.functional.softplus(a) + 1.0, nn.functional.softplus(b) + 1.0)  # +1: unimodal

    def decode(self, feat: torch.Tensor, tokens: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        """Sample (tokens=None) or teacher-force `tokens` (B, L); returns tokens, logp (B,), entropy (B,)."""
        bsz = feat.shape[0]
        h = self.h0_blind.expand(bsz, -1) if self.image_blind else torch.tanh(self.h0(feat))
        prev = torch.full((bsz,), self.sos, dtype=torch.long, device=feat.device)
        used = torch.zeros(bsz, self.n_modules + 1, dtype=torch.bool, device=feat.device)
        alive = torch.ones(bsz, dtype=torch.bool, device=feat.device)
        out, logp, ent = [], feat.new_zeros(bsz), feat.new_zeros(bsz)
        for t in range(self.max_len):
            h = self.gru(self.embed(prev), h)
            logits = self.step_logits(h)
            if not self.allow_repeats:
                logits = logits.masked_fill(used, float("-inf"))  # each module at most once
            dist = Categorical(logits=logits)
            tok = dist.sample() if tokens is None else tokens[:, t].long()
            tok = torch.where(alive, tok, torch.full_like(tok, self.stop))  # after STOP: padding only
            logp = logp + torch.where(alive, dist.log_prob(tok), torch.zeros_like(logp))
            ent = ent + torch.where(alive, dist.entropy(), torch.zeros_like(ent))
            used = used | nn.functional.one_hot(tok, self.n_modules + 1).bool()
            used[:, self.stop] = False  # STOP stays available
            alive = alive & (tok != self.stop)
            out.append(tok)
            prev = tok
        return torch.stack(out, 1), logp, ent

    def get_action_and_value(self, obs: torch.Tensor, action: dict[str, torch.Tensor] | None = None):
        """-> (action {'modules', 'params'}, joint logprob, entropy, value)."""
        feat = self.features(obs)
        tokens, seq_logp, seq_ent = self.decode(feat, None if action is None else action["modules"])
        pdist = self.param_dist(feat)
        params = pdist.sample() if action is None else action["params"]
        # keep Beta log-probs finite at the closed ends of Box[0, 1]
        params_safe = params.clamp(1e-6, 1 - 1e-6)
        logp = seq_logp + pdist.log_prob(params_safe).sum(-1)
        ent = seq_ent + pdist.entropy().sum(-1)
        return {"modules": tokens, "params": params}, logp, ent, self.value_head(feat).squeeze(-1)
