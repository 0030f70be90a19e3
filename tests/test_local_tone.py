"""`local_tone` (posisp_dist/isp/extra/local_tone.py) does what a camera engineer means by local tone mapping:
it is the identity at zero strength, leaves mid-grey where it is, lifts shadows and lowers highlights by
strength x their distance from mid-grey in EV, compresses the range between regions while keeping the detail
and the hue inside them, reaches exactly `radius` pixels across an edge, and works end to end: in the action
space of a config that opts in, through the executor, and pathwise through its twin.

The catalogue-wide tests (test_isp_modules.py, test_torch_twin.py) cover its shape, range, batching, bad
input, twin values and gradients."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from opted_in import step_opted_in

from posisp_dist.isp import modules as m
from posisp_dist.isp.catalogue import registry_for
from posisp_dist.isp.extra.local_tone import ANCHOR_EV, SPEC, local_mean
from posisp_dist.isp.registry import DEFAULT_REGISTRY as R
from posisp_dist.isp.torch_twin import run_pipelines


def run(img: np.ndarray, strength: float, radius: float) -> np.ndarray:
    return SPEC(img, np.tile(np.float32([[strength, radius]]), (img.shape[0], 1)), np)


def flat(level, h: int = 12, w: int = 12) -> np.ndarray:
    return np.broadcast_to(np.float32(level), (1, h, w, 3)).copy()


def two_regions(dark: float = 0.02, bright: float = 0.6, h: int = 16, w: int = 48, seed: int = 0) -> np.ndarray:
    """Left half at `dark`, right half at `bright`, both with a +-10 % multiplicative texture."""
    texture = np.exp2(0.14 * np.random.default_rng(seed).standard_normal((1, h, w, 1)))
    levels = np.where(np.arange(w)[None, None, :, None] < w // 2, dark, bright)
    return (levels * texture * np.float32([1.0, 0.8, 0.6])).astype(np.float32)


def test_zero_strength_is_exactly_the_identity_at_any_radius():
    img = np.random.default_rng(1).random((2, 10, 14, 3), dtype=np.float32)
    for radius in (1.0, 2.5, 16.0):
        np.testing.assert_array_equal(run(img, 0.0, radius), img)


def test_mid_grey_stays_where_it_is():
    for strength, radius in ((0.3, 2.0), (0.8, 16.0)):
        np.testing.assert_allclose(run(flat(0.18), strength, radius), 0.18, rtol=1e-6)


@pytest.mark.parametrize("level", [0.01, 0.05, 0.5, 0.9])
def test_a_flat_field_gets_strength_times_its_ev_distance_from_mid_grey(level):
    strength = 0.4
    want_ev = strength * (ANCHOR_EV - math.log2(level))
    out = run(flat(level), strength, 3.0)
    np.testing.assert_allclose(out, min(level * 2**want_ev, 1.0), rtol=1e-5)
    assert (out > level).all() if level < 0.18 else (out < level).all()  # shadows up, highlights down


def _region_ev(img: np.ndarray, margin: int) -> tuple[float, float]:
    """Mean log2 luminance of each half, `margin` columns away from the edge and from the frame."""
    ev = np.log2(m.luminance(img, np))[0]
    w = ev.shape[1]
    return float(ev[:, margin : w // 2 - margin].mean()), float(ev[:, w // 2 + margin : w - margin].mean())


def test_the_range_between_regions_shrinks_by_the_strength_and_the_detail_inside_stays():
    img, radius = two_regions(), 4.0
    dark0, bright0 = _region_ev(img, margin=6)
    spans = []
    for strength in (0.0, 0.2, 0.4, 0.6, 0.8):
        out = run(img, strength, radius)
        dark, bright = _region_ev(out, margin=6)
        spans.append(bright - dark)
        assert bright - dark == pytest.approx((1 - strength) * (bright0 - dark0), abs=0.05)
        # detail: the EV step between horizontal neighbours inside a region, away from the edge
        inside = np.r_[6 : 24 - 6, 24 + 6 : 48 - 6]
        step_in = np.diff(np.log2(img[0, :, :, 1][:, inside]), axis=1)
        step_out = np.diff(np.log2(out[0, :, :, 1][:, inside]), axis=1)
        keep = np.abs(np.diff(inside)) == 1
        np.testing.assert_allclose(step_out[:, keep], step_in[:, keep], atol=0.03)
    assert all(a > b for a, b in zip(spans, spans[1:], strict=False))  # more strength, smaller range


def test_the_hue_of_each_pixel_is_kept_where_nothing_clips():
    img = two_regions()
    out = run(img, 0.6, 3.0)
    ok = (out < 1.0).all(axis=-1)
    assert ok.mean() > 0.9
    np.testing.assert_allclose((out[..., 0] / out[..., 2])[ok], (img[..., 0] / img[..., 2])[ok], rtol=1e-5)


@pytest.mark.parametrize("radius", [2, 5])
def test_an_edge_reaches_exactly_radius_pixels_into_the_flat_side(radius):
    w, edge = 24, 12  # columns < 12 dark, >= 12 bright
    img = np.where(np.arange(w)[None, None, :, None] < edge, 0.03, 0.5).astype(np.float32).repeat(3, 3)
    img = np.broadcast_to(img, (1, 6, w, 3)).copy()
    out, alone = run(img, 0.5, float(radius)), run(flat(0.03, 6, w), 0.5, float(radius))
    changed = ~np.isclose(out[0, 0, :edge, 0], alone[0, 0, :edge, 0], rtol=1e-6)
    assert changed.nonzero()[0].tolist() == list(range(edge - radius, edge))


def test_a_fractional_radius_blends_the_two_neighbouring_boxes():
    ev = np.random.default_rng(2).random((2, 9, 11))
    near, far = local_mean(ev, np.full(2, 2.0), np), local_mean(ev, np.full(2, 3.0), np)
    np.testing.assert_allclose(local_mean(ev, np.full(2, 2.25), np), 0.75 * near + 0.25 * far, rtol=1e-12)
    for r in (1, 2, 3):  # an integer radius is the house's box filter
        np.testing.assert_allclose(local_mean(ev, np.full(2, float(r)), np), m.box_mean(ev, r, np), atol=1e-6)


def test_a_batch_may_mix_radii():
    img = two_regions(seed=3).repeat(2, 0)
    p = np.float32([[0.5, 2.0], [0.5, 7.5]])
    out = SPEC(img, p, np)
    np.testing.assert_array_equal(out[0], run(img[:1], 0.5, 2.0)[0])
    np.testing.assert_array_equal(out[1], run(img[:1], 0.5, 7.5)[0])
    assert not np.array_equal(out[0], out[1])


def _opted_in():
    return registry_for([*R.names, SPEC.name])


def test_pathwise_gradients_through_pipelines_that_use_it_are_finite_and_reach_its_params():
    reg = _opted_in()
    tone, stop = reg.index(SPEC.name), reg.n_modules
    tokens = np.array([[0, tone, stop], [tone, reg.index("gamma"), stop], [reg.index("ccm"), stop, stop]])
    norm = reg.identity_normalised()[None].repeat(3, 0)
    norm[:, reg.param_slice(tone)] = [0.5, 0.3]  # strength 0.4, radius 5.5 px
    x = torch.from_numpy(two_regions(h=12, w=16).repeat(3, 0).transpose(0, 3, 1, 2).copy())
    for backward in ("exact", "fast"):
        p = torch.from_numpy(norm.copy()).requires_grad_(True)
        run_pipelines(x, tokens, p, reg, backward).square().sum().backward()
        g = p.grad[:, reg.param_slice(tone)]
        assert torch.isfinite(p.grad).all()
        assert (g[:2].abs() > 0).all() and (g[2] == 0).all(), backward  # both params, only where it runs


def test_an_opted_in_env_runs_it_and_learns_its_params_pathwise(tiny_data, tiny_task):
    reward, info, g = step_opted_in(SPEC, [0.5, 0.3], tiny_data, tiny_task)
    assert info["pipeline"]["modules"] == [SPEC.name] and np.isfinite(reward)
    assert info["pipeline"]["params"][0] == pytest.approx({"strength": 0.4, "radius": 5.5})
    assert (np.abs(g) > 0).all()
