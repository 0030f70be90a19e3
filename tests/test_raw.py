"""Raw handling: CFA sampling, packing, demosaic quality, normalisation, references and bad input."""

from __future__ import annotations

import numpy as np
import pytest

from posisp_dist.isp import raw
from posisp_dist.isp.render import camera_isp, grey_world_gains, input_raw
from posisp_dist.isp.xp import to_numpy


def _smooth(b=2, h=32, w=48):
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    base = np.stack([0.5 + 0.3 * np.sin(x / 9), 0.4 + 0.3 * np.cos(y / 7), 0.3 + 0.2 * np.sin((x + y) / 11)], -1)
    return np.stack([base * (0.6 + 0.2 * i) for i in range(b)]).astype(np.float32)


@pytest.mark.parametrize("cfa", raw.CFA_PATTERNS)
def test_mosaic_demosaic_round_trip(cfa, xp):
    img = xp.asarray(_smooth())
    rec = to_numpy(raw.demosaic_bilinear(raw.mosaic(img, cfa, xp), cfa, xp))
    err = np.abs(rec - to_numpy(img))[:, 2:-2, 2:-2]
    assert err.mean() < 0.01 and err.max() < 0.06
    # sampled positions are reproduced exactly
    np.testing.assert_allclose(
        to_numpy(raw.mosaic(xp.asarray(rec), cfa, xp)), to_numpy(raw.mosaic(img, cfa, xp)), atol=1e-6
    )


def test_pack_unpack_round_trip_and_order():
    bayer = np.arange(4 * 6, dtype=np.float32).reshape(1, 4, 6)
    planes = raw.pack(bayer)
    assert planes.shape == (1, 2, 3, 4)
    assert planes[0, 0, 0].tolist() == [0, 1, 6, 7]  # R, Gr, Gb, B of the first cell
    np.testing.assert_array_equal(raw.unpack(planes), bayer)


def test_normalize_black_white():
    out = raw.normalize(np.array([0, 64, 1087, 2110, 4095]), 64, 2110)
    np.testing.assert_allclose(out, [0, 0, 0.5, 1, 1], atol=1e-3)
    with pytest.raises(ValueError, match="white level"):
        raw.normalize(np.zeros(3), 100, 100)


@pytest.mark.parametrize("shape", [(1, 31, 32), (1, 32, 33), (32, 32), (1, 2, 2)])
def test_wrong_shape_raw_raises(shape):
    with pytest.raises(ValueError, match="raw mosaic"):
        raw.demosaic_bilinear(np.zeros(shape, np.float32))


def test_unknown_cfa_raises():
    with pytest.raises(ValueError, match="CFA pattern 'RGBW'"):
        raw.mosaic(np.zeros((4, 4, 3)), "RGBW")


def test_input_raw_and_camera_isp_references():
    img = _smooth()
    counts = (raw.mosaic(img) * (4095 - 256) + 256).astype(np.uint16)
    lin = input_raw(counts, np.full(2, 256.0), np.full(2, 4095.0))
    assert np.abs(lin - img)[:, 2:-2, 2:-2].mean() < 0.01
    gains = grey_world_gains(lin)
    means = (lin * gains[:, None, None]).reshape(2, -1, 3).mean(1)
    np.testing.assert_allclose(means[:, 0], means[:, 1], rtol=1e-4)
    out = camera_isp(lin, np.tile(np.eye(3, dtype=np.float32), (2, 1, 1)))
    assert out.shape == img.shape and out.min() >= 0 and out.max() <= 1
    assert out.mean() > lin.mean()  # gamma + tone brighten linear data
    with pytest.raises(ValueError, match="white_level > black_level"):
        input_raw(counts, np.full(2, 300.0), np.full(2, 200.0))


@pytest.mark.parametrize("bad, match", [(np.nan, "NaN or infinite"), (np.inf, "NaN or infinite"), (-3.0, "negative")])
def test_check_bayer_refuses_non_finite_and_negative_counts(xp, bad, match):
    from posisp_dist.isp.raw import check_bayer

    mosaic = xp.full((1, 8, 8), 100.0, dtype=xp.float32)
    check_bayer(mosaic)  # finite, non-negative: fine
    mosaic[0, 3, 5] = bad
    with pytest.raises(ValueError, match=match):
        check_bayer(mosaic)
    with pytest.raises(ValueError, match="negative"):
        check_bayer(np.full((8, 8), -1, dtype=np.int32), batched=False)
