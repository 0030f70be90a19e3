"""Pictures for runs: learning curves and input-vs-learned-ISP detection grids (pure functions, PNG out)."""

from __future__ import annotations

import math
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

SCORE_THRESHOLD = 0.3  # detections below this are not drawn
DPI = 100


def _save(fig: Figure, path: str | Path) -> Path:
    """Render with the Agg canvas (no pyplot, no global backend) and write a PNG."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    fig.savefig(path, format="png", dpi=DPI)
    return path


def learning_curve_png(history: dict[str, list[tuple[int, float]]], path: str | Path, title: str = "") -> Path:
    """One subplot per non-empty metric series, x = env steps; returns the PNG path."""
    series = {key: rows for key, rows in history.items() if rows}
    cols = 1 if len(series) <= 1 else 2 if len(series) <= 4 else 3
    nrows = max(1, math.ceil(len(series) / cols))
    fig = Figure(figsize=(4.2 * cols, 3.0 * nrows), layout="constrained")
    axes = fig.subplots(nrows, cols, squeeze=False).ravel()
    for ax, (key, rows) in zip(axes, series.items(), strict=False):
        steps, values = zip(*sorted(rows, key=lambda r: r[0]), strict=True)
        ax.plot(steps, values, marker="." if len(steps) < 30 else None, linewidth=1.4)
        ax.set_title(key, fontsize=9)
        ax.set_xlabel("env steps", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    for ax in axes[len(series) :]:
        ax.set_axis_off()
    if not series:
        axes[0].text(0.5, 0.5, "no data", ha="center", va="center", transform=axes[0].transAxes)
    if title:
        fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def _image(row: dict[str, Any], key: str, index: int) -> np.ndarray:
    """The (H, W, 3) image `key` of row `index`, clipped to [0, 1]; ValueError naming the row otherwise."""
    if key not in row:
        raise ValueError(f"row {index}: missing {key!r} image")
    img = np.asarray(row[key], dtype=np.float32)
    if img.ndim != 3 or img.shape[-1] != 3 or img.shape[0] == 0 or img.shape[1] == 0:
        raise ValueError(f"row {index}: {key!r} image must be (H, W, 3), got shape {img.shape}")
    return np.clip(np.nan_to_num(img), 0.0, 1.0)


def _boxes(entry: dict[str, Any] | None, index: int, what: str) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Boxes (k, 4), labels (k,) and scores (k,) or None from a targets / detections dict."""
    if not entry:
        return np.zeros((0, 4)), np.zeros(0, dtype=int), None
    boxes = np.asarray(entry.get("boxes", np.zeros((0, 4))), dtype=np.float64).reshape(-1, 4)
    labels = np.asarray(entry.get("labels", np.zeros(len(boxes))), dtype=np.int64).reshape(-1)
    scores = entry.get("scores")
    scores = None if scores is None else np.asarray(scores, dtype=np.float64).reshape(-1)
    if len(labels) != len(boxes) or (scores is not None and len(scores) != len(boxes)):
        raise ValueError(f"row {index}: {what} boxes, labels and scores differ in length")
    return boxes, labels, scores


def _draw(ax: Any, img: np.ndarray, targets: Any, dets: Any, classes: list[str], title: str) -> None:
    """Image with dashed green ground truth and solid red detections above the score threshold."""
    ax.imshow(img, interpolation="nearest")
    ax.set_axis_off()
    ax.set_title(title, fontsize=7)
    gt_boxes, _, _ = targets
    for x0, y0, x1, y1 in gt_boxes:
        ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, ec="lime", lw=1.2, ls="--"))
    boxes, labels, scores = dets
    for k, (x0, y0, x1, y1) in enumerate(boxes):
        score = 1.0 if scores is None else float(scores[k])
        if score < SCORE_THRESHOLD:
            continue
        ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, ec="red", lw=1.2))
        name = classes[labels[k]] if 0 <= labels[k] < len(classes) else str(labels[k])
        ax.text(x0, y0, f"{name} {score:.2f}", color="white", fontsize=6, va="bottom",
                bbox={"facecolor": "red", "alpha": 0.7, "pad": 1, "linewidth": 0})


def comparison_grid_png(rows: list[dict[str, Any]], classes: list[str], path: str | Path, max_rows: int = 6) -> Path:
    """Grid of input RAW vs learned ISP output with ground truth and detections; returns the PNG path."""
    if not rows:
        raise ValueError("comparison_grid_png needs at least one row")
    rows = rows[: max(1, max_rows)]
    prepared = []
    for i, row in enumerate(rows):
        inp, out = _image(row, "input", i), _image(row, "output", i)
        targets = _boxes(row.get("targets"), i, "targets")
        prepared.append((row, inp, out, targets, _boxes(row.get("det_input"), i, "det_input"),
                         _boxes(row.get("det_output"), i, "det_output")))
    aspect = max(r[1].shape[0] / r[1].shape[1] for r in prepared)
    fig = Figure(figsize=(7.0, 0.9 + 3.5 * aspect * len(prepared)), layout="constrained")
    axes = fig.subplots(len(prepared), 2, squeeze=False)
    for i, (row, inp, out, targets, det_in, det_out) in enumerate(prepared):
        head = f"{row['title']}: " if row.get("title") else ""
        pipeline = " → ".join(row.get("pipeline") or []) or "(no modules)"
        _draw(axes[i, 0], inp, targets, det_in, classes, f"{head}input RAW")
        _draw(axes[i, 1], out, targets, det_out, classes, textwrap.fill(pipeline, width=48))
    return _save(fig, path)
