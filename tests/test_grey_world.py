"""`grey_world` (posisp_dist/isp/extra/grey_world.py) does what a camera engineer means by grey-world white balance:
it is the identity at zero strength, undoes a raw's colour cast at full strength (the channel means come out
equal) while keeping the luminance, blends linearly in between, adapts to each image of a batch, stays finite
on black and single-colour frames, and works end to end: in the action space of a config that opts in, through
the executor, and pathwise through its twin.

The catalogue-wide tests (test_isp_modules.py, test_torch_twin.py) cover its shape, range, batching, bad
input, twin values and gradients."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from opted_in import step_opted_in

from posisp_dist.isp import modules as m
from posisp_dist.isp.catalogue import registry_for
from posisp_dist.isp.extra.grey_world import SPEC
from posisp_dist.isp.registry import DEFAULT_REGISTRY as R
from posisp_dist.isp.torch_twin import run_pipelines

CAST = np.float32([1 / 2.1, 1.0, 1 / 1.7])  # red and blue as the built-in data's unprocessing leaves them


def run(img: np.ndarray, strength: float | list[float]) -> np.ndarray:
    s = np.broadcast_to(np.float32(strength), (img.shape[0],)).reshape(-1, 1)
    return SPEC(img, np.ascontiguousarray(s), np)


def grey_scene(n: int = 1, h: int = 12, w: int = 16, seed: int = 0) -> np.ndarray:
    """A neutral (grey-world) scene: equal channel means, some colour texture, nothing near 0 or 1."""
    rng = np.random.default_rng(seed)
    img = 0.1 + 0.3 * rng.random((n, h, w, 1)) + 0.05 * rng.random((n, h, w, 3))
    img = img / img.reshape(n, -1, 3).mean(1)[:, None, None, :] * 0.3  # channel means exactly 0.3
    return img.astype(np.float32)


def channel_means(img: np.ndarray) -> np.ndarray:
    return img.reshape(img.shape[0], -1, 3).astype(np.float64).mean(1)


def test_zero_strength_is_exactly_the_identity():
    img = np.random.default_rng(1).random((3, 9, 7, 3), dtype=np.float32)
    np.testing.assert_array_equal(run(img, 0.0), img)


def test_full_strength_undoes_a_colour_cast_and_keeps_the_luminance():
    scene = grey_scene(2)
    cast = scene * CAST
    out = run(cast, 1.0)
    means = channel_means(out)
    np.testing.assert_allclose(means, means[:, 1:2].repeat(3, 1), rtol=1e-5)  # the channel means are equal
    # what is left is the scene up to one factor per image; the gains are normalised as `white_balance`'s
    # (0.27 r + 0.67 g + 0.06 b = 1), so brightness stays with `exposure`
    np.testing.assert_allclose(out / out[..., 1:2], scene / scene[..., 1:2], rtol=1e-4)
    gains = (out / cast).reshape(2, -1, 3).mean(1)
    np.testing.assert_allclose(m.luminance(gains[:, None, None, :], np)[:, 0, 0], 1.0, rtol=1e-5)
    np.testing.assert_allclose(gains / gains[:, 1:2], (1 / CAST)[None].repeat(2, 0), rtol=1e-4)


def test_the_gains_blend_linearly_with_the_strength():
    cast = grey_scene() * CAST
    full = run(cast, 1.0) / cast  # per-channel gains (nothing clips)
    for s in (0.25, 0.5, 0.75):
        np.testing.assert_allclose(run(cast, s) / cast, 1 + s * (full - 1), rtol=1e-5)
    reds = [float(channel_means(run(cast, s))[0, 0]) for s in (0.0, 0.5, 1.0)]
    assert reds[0] < reds[1] < reds[2]  # the red-starved raw gets more red as the strength rises


def test_each_image_of_a_batch_gets_its_own_gains():
    scene = grey_scene(2, seed=4)
    cast = scene * np.float32([[1 / 2.4, 1.0, 1 / 1.5], [1 / 1.9, 1.0, 1 / 1.9]])[:, None, None, :]
    out = run(cast, [1.0, 1.0])
    for i in range(2):
        np.testing.assert_array_equal(out[i], run(cast[i : i + 1], 1.0)[0])
        np.testing.assert_allclose(out[i] / out[i][..., 1:2], scene[i] / scene[i][..., 1:2], rtol=1e-4)


@pytest.mark.parametrize("colour", [(0.0, 0.0, 0.0), (0.0, 0.4, 0.0), (0.5, 0.0, 0.0)])
def test_black_and_single_colour_frames_stay_finite_and_in_range(colour):
    img = np.broadcast_to(np.float32(colour), (1, 6, 6, 3)).copy()
    out = run(img, 1.0)
    assert np.isfinite(out).all() and out.min() >= 0.0 and out.max() <= 1.0
    x = torch.from_numpy(img.transpose(0, 3, 1, 2).copy()).requires_grad_(True)
    p = torch.ones(1, 1, requires_grad=True)
    SPEC.twin(x, p).sum().backward()
    assert torch.isfinite(x.grad).all() and torch.isfinite(p.grad).all()


def _opted_in():
    return registry_for([*R.names, SPEC.name])


def test_pathwise_gradients_through_pipelines_that_use_it_reach_its_strength():
    reg = _opted_in()
    gw, stop = reg.index(SPEC.name), reg.n_modules
    tokens = np.array([[0, gw, stop], [gw, reg.index("gamma"), stop], [reg.index("ccm"), stop, stop]])
    norm = reg.identity_normalised()[None].repeat(3, 0)
    norm[:, reg.param_slice(gw)] = 0.5
    x = torch.from_numpy((grey_scene(3) * CAST).transpose(0, 3, 1, 2).copy())
    for backward in ("exact", "fast"):
        p = torch.from_numpy(norm.copy()).requires_grad_(True)
        # a loss that wants more red: the strength's gradient says "more white balance" where the module runs
        run_pipelines(x, tokens, p, reg, backward)[:, 0].mean().neg().backward()
        g = p.grad[:, reg.param_slice(gw)]
        assert torch.isfinite(p.grad).all()
        assert (g[:2] < 0).all() and (g[2] == 0).all(), backward


def test_an_opted_in_env_runs_it_and_learns_its_strength_pathwise(tiny_data, tiny_task):
    reward, info, g = step_opted_in(SPEC, [0.6], tiny_data, tiny_task)
    assert info["pipeline"]["modules"] == [SPEC.name] and np.isfinite(reward)
    assert info["pipeline"]["params"][0] == pytest.approx({"strength": 0.6})
    assert (np.abs(g) > 0).all()
