"""The sequence policy's joint log-probability and entropy, checked by brute-force enumeration."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from posisp_dist.policy import SequencePolicyNet

M, L = 3, 3  # tiny vocabulary: 3 modules + STOP, pipelines up to 3 long


def _all_pipelines(allow_repeats: bool):
    """Every distinct pipeline as a padded token row: k modules then STOP padding."""
    rows = []
    for k in range(L + 1):
        pool = itertools.product(range(M), repeat=k) if allow_repeats else itertools.permutations(range(M), k)
        rows += [list(seq) + [M] * (L - k) for seq in pool]
    return torch.tensor(rows)


@pytest.mark.parametrize("allow_repeats", [False, True])
@pytest.mark.parametrize("image_blind", [False, True])
def test_sequence_probabilities_sum_to_one_and_entropy_is_exact(allow_repeats, image_blind):
    torch.manual_seed(0)
    net = SequencePolicyNet(M, 2, L, hidden=16, image_blind=image_blind, allow_repeats=allow_repeats)
    feat = net.features(torch.rand(1, 16, 16, 3))
    seqs = _all_pipelines(allow_repeats)
    _, logp, _ = net.decode(feat.expand(len(seqs), -1), seqs)
    assert torch.exp(logp).sum().item() == pytest.approx(1.0, abs=1e-5)
    exact_entropy = -(torch.exp(logp) * logp).sum().item()
    # the per-step entropy sum along a path, averaged under the policy, equals the joint entropy
    _, _, path_ent = net.decode(feat.expand(len(seqs), -1), seqs)
    assert (torch.exp(logp) * path_ent).sum().item() == pytest.approx(exact_entropy, rel=1e-5)


def test_repeats_are_masked_and_stop_pads():
    torch.manual_seed(1)
    net = SequencePolicyNet(M, 2, L, hidden=16)
    action, logp, ent, value = net.get_action_and_value(torch.rand(256, 16, 16, 3))
    for row in action["modules"].tolist():
        mods = row[: row.index(M)] if M in row else row
        assert len(set(mods)) == len(mods)  # no module twice
        assert all(t == M for t in row[len(mods) :])  # STOP padding after the first STOP
    assert torch.isfinite(logp).all() and (ent > 0).all() and value.shape == (256,)
    _, repeat_logp, _ = net.decode(net.features(torch.rand(1, 16, 16, 3)), torch.tensor([[0, 0, M]]))
    assert repeat_logp.item() == -math.inf


def test_scoring_a_sampled_action_reproduces_its_logprob():
    torch.manual_seed(2)
    net = SequencePolicyNet(10, 27, 10)
    obs = torch.rand(8, 64, 64, 3)
    action, logp, ent, value = net.get_action_and_value(obs)
    _, logp2, ent2, value2 = net.get_action_and_value(obs, action)
    torch.testing.assert_close(logp, logp2)
    torch.testing.assert_close(value, value2)
    assert action["params"].shape == (8, 27) and ((action["params"] >= 0) & (action["params"] <= 1)).all()
