"""Learning-curve and comparison-grid PNGs: written, readable, not blank, validated."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from posisp_dist.trained.figures import comparison_grid_png, learning_curve_png

CLASSES = ["circle", "square", "triangle"]


def _pixels(path: Path) -> np.ndarray:
    """The PNG as an RGB array."""
    assert path.is_file() and path.stat().st_size > 0
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"))


def _row(seed: int, size: int = 48, title: str | None = "img 0") -> dict:
    """One comparison row with a ground-truth box, one kept and one dropped detection."""
    rng = np.random.default_rng(seed)
    dets = {"boxes": np.array([[4.0, 4.0, 30.0, 30.0], [1, 1, 5, 5]]), "scores": np.array([0.9, 0.1]),
            "labels": np.array([1, 2])}
    return {
        "input": rng.random((size, size, 3)) * 0.1,
        "output": rng.random((size, size, 3)),
        "targets": {"boxes": np.array([[5.0, 5.0, 28.0, 29.0]]), "labels": np.array([1])},
        "det_input": {"boxes": np.zeros((0, 4)), "scores": np.zeros(0), "labels": np.zeros(0, dtype=int)},
        "det_output": dets,
        "pipeline": ["white_balance", "ccm", "gamma", "denoise", "sharpen", "tone_curve"],
        "title": title,
    }


def test_learning_curve_png_skips_empty_series(tmp_path):
    history = {
        "charts/episode_return_mean": [(0, -5.0), (200, -4.0), (400, -3.5)],
        "losses/policy_loss": [(400, 0.3), (0, 0.5), (200, 0.4)],
        "isp/n_modules": [],
    }
    out = learning_curve_png(history, tmp_path / "sub" / "curves.png", title="run x")
    assert out == tmp_path / "sub" / "curves.png"
    px = _pixels(out)
    assert px.shape[0] > 0 and px.shape[1] > 0 and px.shape[2] == 3
    assert px.std() > 0
    # two non-empty series -> two columns, one row: wider than tall
    assert px.shape[1] > px.shape[0]


def test_learning_curve_png_all_empty(tmp_path):
    out = learning_curve_png({"a": []}, tmp_path / "empty.png")
    assert _pixels(out).std() > 0


def test_comparison_grid_png_grows_with_rows(tmp_path):
    one = _pixels(comparison_grid_png([_row(0)], CLASSES, tmp_path / "one.png"))
    two = _pixels(comparison_grid_png([_row(0), _row(1, title=None)], CLASSES, tmp_path / "two.png"))
    assert one.size > 0 and two.size > 0
    assert one.std() > 0 and two.std() > 0
    assert two.shape[0] > one.shape[0]
    capped = _pixels(comparison_grid_png([_row(i) for i in range(4)], CLASSES, tmp_path / "cap.png", max_rows=2))
    assert capped.shape == two.shape


def test_comparison_grid_png_draws_detections(tmp_path):
    """Red detection boxes and dashed green ground truth put those colours into the picture."""
    row = _row(0)
    row["input"] = np.zeros((48, 48, 3))
    row["output"] = np.zeros((48, 48, 3))
    px = _pixels(comparison_grid_png([row], CLASSES, tmp_path / "dets.png")).astype(int)
    red = (px[..., 0] > 180) & (px[..., 1] < 80) & (px[..., 2] < 80)
    green = (px[..., 1] > 180) & (px[..., 0] < 80) & (px[..., 2] < 80)
    assert red.sum() > 20 and green.sum() > 20


@pytest.mark.parametrize("key", ["input", "output"])
def test_comparison_grid_png_rejects_bad_image(tmp_path, key):
    rows = [_row(0), _row(1)]
    rows[1][key] = np.zeros((48, 48))
    with pytest.raises(ValueError, match="row 1"):
        comparison_grid_png(rows, CLASSES, tmp_path / "bad.png")
    assert not (tmp_path / "bad.png").exists()
