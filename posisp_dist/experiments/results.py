"""The one writer of experiment results: flat rows (`method`, `seed`, metrics, counters) -> mean ± std per
method over seeds -> a markdown table and a JSON file. `posisp seeds` and `posisp compare` both use it."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np


def aggregate(rows: list[dict[str, Any]], keys: Sequence[str]) -> list[dict[str, Any]]:
    """Per method (in first-seen order): the number of seeds, and the mean and population std over the seeds
    of each of `keys` the method's rows have (`<key>`, `<key>_std`)."""
    out = []
    for method in dict.fromkeys(r["method"] for r in rows):
        mine = [r for r in rows if r["method"] == method]
        agg: dict[str, Any] = {"method": method, "seeds": len(mine)}
        for key in keys:
            vals = [float(r[key]) for r in mine if r.get(key) is not None]
            if vals:
                agg[key], agg[f"{key}_std"] = float(np.mean(vals)), float(np.std(vals))
        out.append(agg)
    return out


def cell(a: dict[str, Any], key: str, fmt: str = ".1f") -> str:
    """`mean ± std` (the std only when there are several seeds and they differ), `–` when absent."""
    if key not in a:
        return "–"
    std = a[f"{key}_std"]
    return f"{a[key]:{fmt}} ± {std:{fmt}}" if a["seeds"] > 1 and std else f"{a[key]:{fmt}}"


def table(
    agg: list[dict[str, Any]], columns: Sequence[tuple[str, str, str]], rows: list[dict[str, Any]] | None = None,
    per_seed: tuple[str, str] | None = None,
) -> str:
    """Markdown: method | each (label, key, format) column | with `per_seed` = (label, key), the key's value per
    seed from `rows`."""
    labels = [label for label, _, _ in columns] + ([f"per seed ({per_seed[0]})"] if per_seed else [])
    lines = ["| method | " + " | ".join(labels) + " |", "|---" * (len(labels) + 1) + "|"]
    for a in agg:
        cells = [cell(a, key, fmt) for _, key, fmt in columns]
        if per_seed:
            cells.append(", ".join(f"{r[per_seed[1]]:.1f}" for r in rows or () if r["method"] == a["method"]))
        lines.append(f"| {a['method']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def metric_columns(metrics: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    """Table columns of a task's metrics (as declared in an eval payload)."""
    return [(m["label"], m["key"], ".1f") for m in metrics]


def write_json(path: str | Path, payload: dict[str, Any]) -> None:
    """Write (or rewrite, after every finished row) a results file."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(payload, indent=2, default=str))
