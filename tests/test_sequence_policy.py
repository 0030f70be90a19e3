"""The sequence policy's joint log-probability and entropy, checked by brute-force enumeration."""

from __future__ import annotations

import itertools

import pytest
import torch

from posisp_dist.isp import DEFAULT_REGISTRY as R
from posisp_dist.policy import SequencePolicyNet
from posisp_dist.policy.pipeline_dist import MASKED, alive_mask

M, L = 3, 3  # tiny vocabulary: 3 modules + STOP, pipelines up to 3 long


def _all_pipelines(allow_repeats: bool):
    """Every distinct pipeline as a padded token row: k modules then STOP padding."""
    rows = []
    for k in range(L + 1):
        pool = itertools.product(range(M), repeat=k) if allow_repeats else itertools.permutations(range(M), k)
        rows += [list(seq) + [M] * (L - k) for seq in pool]
    return torch.tensor(rows)


def _score(net, feat, seqs):
    dec = net.decode(feat.expand(len(seqs), -1), seqs)
    return net.distribution(feat.expand(len(seqs), -1), dec)


@pytest.mark.parametrize("allow_repeats", [False, True])
@pytest.mark.parametrize("image_blind", [False, True])
def test_sequence_probabilities_sum_to_one_and_entropy_is_exact(allow_repeats, image_blind):
    torch.manual_seed(0)
    net = SequencePolicyNet(M, 2, L, hidden=16, image_blind=image_blind, allow_repeats=allow_repeats)
    feat = net.features(torch.rand(1, 16, 16, 3))
    seqs = _all_pipelines(allow_repeats)
    dist = _score(net, feat, seqs)
    logp = dist.token_logp(seqs)
    assert torch.exp(logp).sum().item() == pytest.approx(1.0, abs=1e-5)
    exact_entropy = -(torch.exp(logp) * logp).sum().item()
    # the per-step entropy sum along a path, averaged under the policy, equals the joint entropy
    assert (torch.exp(logp) * dist.token_entropy()).sum().item() == pytest.approx(exact_entropy, rel=1e-5)


def test_kl_along_paths_averages_to_the_exact_joint_kl():
    torch.manual_seed(3)
    p_net, q_net = SequencePolicyNet(M, 2, L, hidden=16), SequencePolicyNet(M, 2, L, hidden=16)
    obs = torch.rand(1, 16, 16, 3)
    seqs = _all_pipelines(False)
    p = _score(p_net, p_net.features(obs), seqs)
    q = _score(q_net, q_net.features(obs), seqs)
    lp, lq = p.token_logp(seqs), q.token_logp(seqs)
    exact = (lp.exp() * (lp - lq)).sum()
    beta_kl = torch.distributions.kl_divergence(p.params_dist, q.params_dist).sum(-1)
    path_kl = p.kl(q) - beta_kl  # token part of the path KL
    assert (lp.exp() * path_kl).sum().item() == pytest.approx(exact.item(), rel=1e-4)


def test_repeats_are_masked_and_stop_pads():
    torch.manual_seed(1)
    net = SequencePolicyNet(M, 2, L, hidden=16)
    action, logp, ent, value = net.get_action_and_value(torch.rand(256, 16, 16, 3))
    for row in action["modules"].tolist():
        mods = row[: row.index(M)] if M in row else row
        assert len(set(mods)) == len(mods)  # no module twice
        assert all(t == M for t in row[len(mods) :])  # STOP padding after the first STOP
    assert torch.isfinite(logp).all() and torch.isfinite(ent).all() and value.shape == (256,)
    feat = net.features(torch.rand(1, 16, 16, 3))
    repeat = torch.tensor([[0, 0, M]])
    assert net.distribution(feat, net.decode(feat, repeat)).token_logp(repeat).item() < MASKED / 2


def test_alive_mask_marks_positions_up_to_the_first_stop():
    tokens = torch.tensor([[0, 1, M], [M, M, M], [2, 0, 1]])
    assert alive_mask(tokens, M).tolist() == [[1, 1, 1], [1, 0, 0], [1, 1, 1]]
    net = SequencePolicyNet(M, 2, L, hidden=8)
    dec = net.decode(net.features(torch.rand(3, 16, 16, 3)), tokens)
    assert torch.equal(dec.alive, alive_mask(tokens, M))


def test_scoring_a_sampled_action_reproduces_its_logprob():
    torch.manual_seed(2)
    net = SequencePolicyNet(R.n_modules, R.n_params, 10)
    obs = torch.rand(8, 64, 64, 3)
    action, logp, ent, value = net.get_action_and_value(obs)
    _, logp2, ent2, value2 = net.get_action_and_value(obs, action)
    torch.testing.assert_close(logp, logp2)
    torch.testing.assert_close(value, value2)
    assert action["params"].shape == (8, R.n_params) and ((action["params"] >= 0) & (action["params"] <= 1)).all()


def test_greedy_decoding_is_deterministic_and_image_blind_ignores_the_image():
    torch.manual_seed(4)
    net = SequencePolicyNet(R.n_modules, R.n_params, 10, hidden=16)
    obs = torch.rand(4, 32, 32, 3)
    a1, *_ = net.get_action_and_value(obs, greedy=True)
    a2, *_ = net.get_action_and_value(obs, greedy=True)
    assert torch.equal(a1["modules"], a2["modules"]) and torch.equal(a1["params"], a2["params"])
    blind = SequencePolicyNet(R.n_modules, R.n_params, 10, hidden=16, image_blind=True)
    d1 = blind.decode(blind.features(torch.rand(2, 32, 32, 3)), greedy=True)
    d2 = blind.decode(blind.features(torch.rand(2, 32, 32, 3)), greedy=True)
    torch.testing.assert_close(d1.logits, d2.logits)  # the sequence does not depend on the image


def test_exposure_stats_read_stops_in_units_of_four():
    """Doubling a preview's level adds exactly 1/4 to each channel's mean (log2 / 4) and leaves the spread alone."""
    from posisp_dist.policy.sequence_policy import exposure_channels, exposure_stats

    obs = torch.rand(2, 8, 8, 3) * 0.1 + 0.01
    a, b = exposure_stats(exposure_channels(obs)), exposure_stats(exposure_channels(2.0 * obs))
    torch.testing.assert_close(b[:, :3] - a[:, :3], torch.full((2, 3), 0.25))
    torch.testing.assert_close(b[:, 3:], a[:, 3:])
    expected = (torch.log2(obs) / 4).permute(0, 3, 1, 2).flatten(2)
    torch.testing.assert_close(a, torch.cat([expected.mean(-1), expected.std(-1)], 1))


@pytest.mark.parametrize("param_stats", [False, True])
def test_parameter_network_tells_brightness_apart_only_with_exposure_stats(param_stats):
    """A ReLU encoder whose features only scale with the image's brightness is all LayerNorm-ed away: the same
    parameters for an image and its 4x brighter copy, unless the head also sees the exposure statistics."""
    torch.manual_seed(0)
    net = SequencePolicyNet(M, 4, L, hidden=16, param_learning="pathwise", param_stats=param_stats)
    encoder = net.param_encoder[0]
    with torch.no_grad():
        for layer in encoder:  # bias-free, non-negative weights, 3 linear input channels only: f(c x) = c f(x)
            if isinstance(layer, (torch.nn.Conv2d, torch.nn.Linear)):
                layer.weight.abs_()
                layer.bias.zero_()
        encoder[0].weight[:, 3:].zero_()
        net.param_out.weight.normal_()
    obs = torch.rand(1, 16, 16, 3) * 0.05 + 0.01
    p = net.params(torch.cat([obs, 4.0 * obs]))
    assert net.param_out.in_features == 16 + (6 if param_stats else 0)
    if param_stats:
        assert (p[0] - p[1]).abs().max() > 1e-2
    else:
        torch.testing.assert_close(p[0], p[1])
