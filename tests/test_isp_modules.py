"""Per-module tests driven by the catalogue (STYLE.md): shape, bad input, identity, corners, batching, for the
paper's ten and every module of `isp/extra/`."""

from __future__ import annotations

import numpy as np
import pytest

from posisp_dist.isp import modules as m
from posisp_dist.isp.catalogue import catalogue
from posisp_dist.isp.kernels import implementation
from posisp_dist.isp.xp import to_numpy

SPECS = list(catalogue().modules)
IDS = [s.name for s in SPECS]


def _img(xp, b=3, h=24, w=20, seed=0):
    return xp.asarray(np.random.default_rng(seed).random((b, h, w, 3), dtype=np.float32))


def _params(spec, b, value):
    return np.tile(np.asarray(getattr(spec, value), np.float32), (b, 1))


def _rand_params(spec, b, seed=1):
    rng = np.random.default_rng(seed)
    lo, hi = np.asarray(spec.low, np.float32), np.asarray(spec.high, np.float32)
    return (lo + (hi - lo) * rng.random((b, spec.n_params))).astype(np.float32)


@pytest.mark.parametrize("spec", SPECS, ids=IDS)
def test_shape_dtype(spec, xp):
    out = spec(_img(xp), xp.asarray(_rand_params(spec, 3)), xp)
    assert out.shape == (3, 24, 20, 3) and out.dtype == xp.float32


@pytest.mark.parametrize("spec", SPECS, ids=IDS)
def test_identity_params_give_identity(spec, xp):
    img = _img(xp)
    out = spec(img, xp.asarray(_params(spec, 3, "identity")), xp)
    np.testing.assert_allclose(to_numpy(out), to_numpy(img), atol=1e-5)


@pytest.mark.parametrize("corner", ["low", "high"])
@pytest.mark.parametrize("spec", SPECS, ids=IDS)
def test_corners_stay_in_range(spec, corner, xp):
    out = to_numpy(spec(_img(xp), xp.asarray(_params(spec, 3, corner)), xp))
    assert np.isfinite(out).all() and out.min() >= 0.0 and out.max() <= 1.0


@pytest.mark.parametrize("spec", SPECS, ids=IDS)
def test_batched_equals_looped(spec, xp):
    img, p = _img(xp, b=4), xp.asarray(_rand_params(spec, 4))
    batched = to_numpy(spec(img, p, xp))
    looped = np.concatenate([to_numpy(spec(img[i : i + 1], p[i : i + 1], xp)) for i in range(4)])
    np.testing.assert_allclose(batched, looped, atol=1e-6)


@pytest.mark.parametrize("spec", SPECS, ids=IDS)
def test_deterministic(spec, xp):
    img, p = _img(xp), xp.asarray(_rand_params(spec, 3))
    np.testing.assert_array_equal(to_numpy(spec(img, p, xp)), to_numpy(spec(img, p, xp)))


@pytest.mark.parametrize("spec", SPECS, ids=IDS)
def test_bad_input_raises(spec):
    img = _img(np)
    p = _params(spec, 3, "identity")
    with pytest.raises(ValueError, match=r"\(B, H, W, 3\)"):
        spec(img[..., :2], p)
    with pytest.raises(ValueError, match="float32"):
        spec(img.astype(np.float64), p)
    with pytest.raises(ValueError, match="params must be shaped"):
        spec(img, p[:, :0] if spec.n_params > 1 else np.ones((3, 2), np.float32))
    bad = p.copy()
    bad[1, 0] = np.nan
    with pytest.raises(ValueError, match=f"{spec.name}.*NaN.*{spec.param_names[0]}"):
        spec(img, bad)
    bad[1, 0] = spec.high[0] + 1.0
    with pytest.raises(ValueError, match=f"out-of-range.*{spec.param_names[0]}"):
        spec(img, bad)


def test_parity_numpy_cupy():
    cupy = pytest.importorskip("cupy")  # runs on GPU machines (device tool); CI has no GPU
    for spec in SPECS:
        img, p = _img(np, b=2, h=32, w=32), _rand_params(spec, 2)
        ref = spec(img, p, np)
        got = spec(cupy.asarray(img), cupy.asarray(p), cupy).get()
        np.testing.assert_allclose(got, ref, atol=2e-5, err_msg=spec.name)
        fused = implementation(spec, cupy)  # the CUDA kernel where the module has one
        np.testing.assert_allclose(fused(cupy.asarray(img), cupy.asarray(p), cupy).get(), ref, atol=2e-5)


# --- what each module does, checked against its definition ---------------------------------------------


def test_exposure_one_stop_doubles():
    img = np.full((1, 4, 4, 3), 0.2, np.float32)
    np.testing.assert_allclose(m.exposure(img, np.array([[1.0]], np.float32), np), 0.4, rtol=1e-6)


def test_gamma_is_a_power():
    img = np.full((1, 2, 2, 3), 0.25, np.float32)
    np.testing.assert_allclose(m.gamma(img, np.array([[0.5]], np.float32), np), 0.5, rtol=1e-5)


def test_ccm_rows_normalised_keep_greys():
    grey = np.full((1, 3, 3, 3), 0.3, np.float32)
    p = np.array([[2.0, -0.5, 0.3, 0.1, 1.5, -0.2, -1.0, 0.4, 1.9]], np.float32)
    np.testing.assert_allclose(m.ccm(grey, p, np), 0.3, atol=1e-6)


def test_white_balance_keeps_luminance_of_grey_and_applies_gains():
    grey = np.full((1, 2, 2, 3), 0.5, np.float32)
    out = m.white_balance(grey, np.array([[1.1, 1.0, 1 / 1.1]], np.float32), np)
    np.testing.assert_allclose(m.luminance(out, np), 0.5, rtol=1e-5)
    assert out[0, 0, 0, 0] > out[0, 0, 0, 1] > out[0, 0, 0, 2]


def test_desaturation_full_gives_grey():
    out = m.desaturation(
        np.random.default_rng(0).random((2, 4, 4, 3), dtype=np.float32), np.ones((2, 1), np.float32), np
    )
    np.testing.assert_allclose(out[..., 0], out[..., 2], atol=1e-6)


def test_saturation_plus_raises_saturation_keeps_value():
    img = np.array([[[[0.6, 0.4, 0.3]]]], np.float32)
    out = m.saturation_plus(img, np.ones((1, 1), np.float32), np)
    sat = lambda x: (x.max() - x.min()) / x.max()  # noqa: E731
    assert sat(out) > sat(img) and out.max() == pytest.approx(img.max())


def test_tone_curve_is_monotone_with_fixed_ends():
    x = np.linspace(0, 1, 64, dtype=np.float32).reshape(1, 1, 64, 1).repeat(3, 3)
    p = np.array([[2.0, 0.5, 1.0, 1.5, 0.7, 2.0, 0.5, 1.2]], np.float32)
    y = m.tone_curve(x, p, np)[0, 0, :, 0]
    assert np.all(np.diff(y) >= 0) and y[0] == pytest.approx(0) and y[-1] == pytest.approx(1, abs=1e-6)


def test_denoise_reduces_noise_on_flat_image():
    rng = np.random.default_rng(0)
    clean = np.full((1, 32, 32, 3), 0.5, np.float32)
    noisy = np.clip(clean + rng.normal(0, 0.05, clean.shape), 0, 1).astype(np.float32)
    out = m.denoise(noisy, np.array([[0.05]], np.float32), np)
    assert np.abs(out - clean).mean() < 0.5 * np.abs(noisy - clean).mean()


def test_sharpen_above_one_adds_detail_below_one_blurs():
    img = np.random.default_rng(0).random((1, 16, 16, 3), dtype=np.float32) * 0.5 + 0.25
    detail = lambda x: np.abs(np.diff(x, axis=2)).mean()  # noqa: E731
    assert detail(m.sharpen(img, np.array([[2.0]], np.float32), np)) > detail(img)
    assert detail(m.sharpen(img, np.array([[0.0]], np.float32), np)) < detail(img)


def test_contrast_positive_spreads_luminance():
    img = np.linspace(0.2, 0.8, 16, dtype=np.float32).reshape(1, 1, 16, 1).repeat(3, 3)
    out = m.contrast(img, np.array([[1.0]], np.float32), np)
    assert out.std() > img.std()


def test_box_mean_matches_direct_window_mean():
    x = np.random.default_rng(0).random((2, 9, 7), dtype=np.float32)
    got = m.box_mean(x, 1, np)
    p = np.pad(x, ((0, 0), (1, 1), (1, 1)), mode="edge")
    want = np.mean([p[:, dy : dy + 9, dx : dx + 7] for dy in range(3) for dx in range(3)], axis=0)
    np.testing.assert_allclose(got, want, atol=1e-5)
