"""The POS-ISP sequence policy as one torch module: image encoder -> autoregressive module decoder
(repeats masked, STOP allowed) + a value head, and the parameters of all modules: either a Beta head
trained by PPO (`param_learning="ppo"`), or POS-ISP's deterministic parameter network (`"pathwise"`: its
own image encoder -> sigmoid over all normalised parameters, started at the modules' identity), trained
by the gradient of the task loss through the ISP's torch twin rather than by the policy gradient.

`get_action_and_value(obs, action=None)` mirrors CleanRL: it samples (or scores a given) whole pipeline
and returns its joint log-probability, entropy and the state value. The probability math lives in
`PipelineDistribution`, which RLlib's PPO loss uses on the same inputs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import nn
from torch.distributions import Categorical

from posisp_dist.policy.pipeline_dist import MASKED, PipelineDistribution

LOG_FLOOR_STOPS = 12.0  # previews are seen in stops below white down to 2**-12 (a 12-bit sensor's floor)


def exposure_channels(obs: torch.Tensor) -> torch.Tensor:
    """(B, S, S, 3 + E) linear previews [+ E state planes] -> (B, 6 + E, S, S): linear and log2 (stops, mapped
    to [0, 1]) channels of the image, then the state planes unchanged.

    Low-light raw previews live near 0 in linear units, where a conv net sees almost no contrast between
    a 1/64 and a 1/8 exposure; in stops the difference is what it is (3 stops).
    """
    x = obs.permute(0, 3, 1, 2)
    lin = x[:, :3]
    stops = torch.log2(lin.clamp_min(2.0**-LOG_FLOOR_STOPS)) / LOG_FLOOR_STOPS + 1.0
    return torch.cat([lin, stops, x[:, 3:]], dim=1)


EXPOSURE_STATS = 6  # exposure_stats' width


def exposure_stats(channels: torch.Tensor) -> torch.Tensor:
    """(B, 6 + E, S, S) exposure channels -> (B, 6): per colour channel, the mean and the spread of the preview's
    log2 level, in units of 4 stops (so a few stops of under-exposure read as about -1 to -2, not -0.2).

    The parameter network's encoder is a ReLU net whose features grow with the image's brightness along one
    direction; the LayerNorm after it divides that scale out, and with it how dark the image is. These six numbers
    reach the head beside the normalised features, so the parameters can follow each image's exposure and noise.
    """
    stops = (channels[:, 3:6] - 1.0) * (LOG_FLOOR_STOPS / 4.0)  # log2(level) / 4
    return torch.cat([stops.mean((2, 3)), stops.std((2, 3))], dim=1)


class Decoded(NamedTuple):
    tokens: torch.Tensor  # (B, L) module ids, STOP-padded after the first STOP
    logits: torch.Tensor  # (B, L, M + 1) step logits after masking
    alive: torch.Tensor  # (B, L) 1 where the position was reached before a STOP


def image_encoder(in_channels: int, hidden: int) -> nn.Sequential:
    """Three strided convs over the exposure channels -> global average -> (B, hidden)."""
    return nn.Sequential(
        nn.Conv2d(in_channels, 16, 3, 2, 1),  # linear + log-exposure channels [+ state planes]
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


PARAM_INIT_MARGIN = 0.05  # the parameter network starts this far inside [0, 1]: sigmoid slopes stay usable


class SequencePolicyNet(nn.Module):
    def __init__(
        self,
        n_modules: int,
        n_params: int,
        max_len: int,
        hidden: int = 64,
        image_blind: bool = False,
        allow_repeats: bool = False,
        state_planes: int = 0,
        param_learning: str = "ppo",
        param_init: Sequence[float] | None = None,
        param_stats: bool = False,
    ) -> None:
        super().__init__()
        if param_learning not in ("ppo", "pathwise"):
            raise ValueError(f"param_learning must be ppo or pathwise, got {param_learning!r}")
        self.n_modules, self.n_params, self.max_len = n_modules, n_params, max_len
        self.stop, self.sos = n_modules, n_modules + 1
        self.image_blind, self.allow_repeats = image_blind, allow_repeats
        self.pathwise = param_learning == "pathwise"
        self.param_stats = param_stats and self.pathwise
        self.encoder = image_encoder(6 + state_planes, hidden)
        if self.pathwise:  # POS-ISP's parameter predictor: its own encoder, deterministic output
            # LayerNorm: the head sees bounded features, so encoder updates cannot push every sigmoid to 0 or 1
            self.param_encoder = nn.Sequential(image_encoder(6 + state_planes, hidden), nn.LayerNorm(hidden))
            self.param_out = nn.Linear(hidden + (EXPOSURE_STATS if self.param_stats else 0), n_params)
            init = torch.full((n_params,), 0.5) if param_init is None else torch.as_tensor(param_init).float()
            if init.shape != (n_params,):
                raise ValueError(f"param_init must hold {n_params} normalised values, got {tuple(init.shape)}")
            with torch.no_grad():  # start every module at (near) its identity: early pipelines do no harm
                self.param_out.weight.mul_(0.1)
                self.param_out.bias.copy_(torch.logit(init.clamp(PARAM_INIT_MARGIN, 1 - PARAM_INIT_MARGIN)))
        self.h0 = nn.Linear(hidden, hidden)  # image -> initial decoder state
        self.h0_blind = nn.Parameter(torch.zeros(hidden))  # the paper's image-blind start state
        self.embed = nn.Embedding(n_modules + 2, hidden)  # modules, STOP, SOS
        self.gru = nn.GRUCell(hidden, hidden)
        self.step_logits = nn.Linear(hidden, n_modules + 1)
        self.param_head = None if self.pathwise else nn.Linear(hidden, 2 * n_params)  # Beta (PPO)
        self.value_head = nn.Linear(hidden, 1)

    def features(self, obs: torch.Tensor) -> torch.Tensor:
        """obs: (B, S, S, 3) previews in [0, 1] -> (B, hidden)."""
        return self.encoder(exposure_channels(obs))

    def params(self, obs: torch.Tensor) -> torch.Tensor:
        """Pathwise: (B, S, S, 3) previews -> (B, P) normalised parameters of every module, in (0, 1)."""
        if not self.pathwise:
            raise RuntimeError("params() is the pathwise parameter network; this policy samples from a Beta head")
        channels = exposure_channels(obs)
        feat = self.param_encoder(channels)
        if self.param_stats:
            feat = torch.cat([feat, exposure_stats(channels)], dim=-1)
        return torch.sigmoid(self.param_out(feat))

    def value(self, feat: torch.Tensor) -> torch.Tensor:
        return self.value_head(feat).squeeze(-1)

    def decode(self, feat: torch.Tensor, tokens: torch.Tensor | None = None, greedy: bool = False) -> Decoded:
        """Sample (or take the argmax, or teacher-force `tokens` (B, L)) a pipeline, one token at a time."""
        bsz = feat.shape[0]
        h = self.h0_blind.expand(bsz, -1) if self.image_blind else torch.tanh(self.h0(feat))
        prev = torch.full((bsz,), self.sos, dtype=torch.long, device=feat.device)
        used = torch.zeros(bsz, self.n_modules + 1, dtype=torch.bool, device=feat.device)
        alive = torch.ones(bsz, dtype=torch.bool, device=feat.device)
        out, all_logits, all_alive = [], [], []
        for t in range(self.max_len):
            h = self.gru(self.embed(prev), h)
            logits = self.step_logits(h)
            if not self.allow_repeats:
                logits = logits.masked_fill(used, MASKED)  # each module at most once
            if tokens is not None:
                tok = tokens[:, t].long()
            elif greedy:
                tok = logits.argmax(-1)
            else:
                tok = Categorical(logits=logits).sample()
            tok = torch.where(alive, tok, torch.full_like(tok, self.stop))  # after STOP: padding only
            all_logits.append(logits)
            all_alive.append(alive.float())
            used = used | nn.functional.one_hot(tok, self.n_modules + 1).bool()
            used[:, self.stop] = False  # STOP stays available
            alive = alive & (tok != self.stop)
            out.append(tok)
            prev = tok
        return Decoded(torch.stack(out, 1), torch.stack(all_logits, 1), torch.stack(all_alive, 1))

    def distribution(self, feat: torch.Tensor, decoded: Decoded) -> PipelineDistribution:
        beta_raw = None if self.param_head is None else self.param_head(feat)
        return PipelineDistribution(decoded.logits, decoded.alive, beta_raw)

    def act(
        self, obs: torch.Tensor, action: dict[str, torch.Tensor] | None = None, greedy: bool = False
    ) -> tuple[dict[str, torch.Tensor], PipelineDistribution, torch.Tensor]:
        """Sample (greedy: argmax tokens and Beta means), or teacher-force `action`'s tokens of, a whole
        pipeline -> (action {'modules', 'params'}, its distribution along the taken path, features)."""
        feat = self.features(obs)
        decoded = self.decode(feat, None if action is None else action["modules"], greedy)
        dist = self.distribution(feat, decoded)
        if action is not None:
            params = action["params"]
        elif self.pathwise:
            params = self.params(obs)
        elif greedy:
            params = dist.params_dist.mean
        else:
            params = dist.params_dist.sample()
        return {"modules": decoded.tokens, "params": params}, dist, feat

    def get_action_and_value(
        self, obs: torch.Tensor, action: dict[str, torch.Tensor] | None = None, greedy: bool = False
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor, torch.Tensor]:
        """-> (action {'modules', 'params'}, joint logprob, entropy, value)."""
        act, dist, feat = self.act(obs, action, greedy)
        return act, dist.logp(act), dist.entropy(), self.value(feat)
