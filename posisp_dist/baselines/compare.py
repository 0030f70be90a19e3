"""`posisp compare`: sequence-level PPO vs its image-blind variant vs step-wise PPO (AdaptiveISP-style) vs
random search vs the camera ISP vs input RAW, with equal budgets, over seeds, as nested MLflow runs."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from pydantic import Field, ValidationError, model_validator

from posisp_dist.config import Config, ConfigError, _Strict, load_config

PPO_PARAMS = {"param_learning": "ppo"}
METHODS = {  # method -> config overrides (section -> fields)
    "sequence_ppo": {"policy": {"param_learning": "pathwise"}},
    "sequence_ppo_blind": {"policy": {"image_blind": True, "param_learning": "pathwise"}},
    "sequence_ppo_ppo_params": {"policy": PPO_PARAMS},
    "stepwise_ppo": {"env": {"kind": "stepwise"}, "policy": PPO_PARAMS},
    "stepwise_ppo_adaptiveisp": {"env": {"kind": "stepwise", "all_modules_per_step": True}, "policy": PPO_PARAMS},
}
FIXED = ("random_search", "camera_isp", "input_raw")


class CompareConfig(_Strict):
    """A comparison: a base experiment, the learned methods, seeds and one equal budget for all."""

    base: str = Field("configs/quick.yaml", description="experiment YAML every method starts from")
    methods: tuple[str, ...] = Field(tuple(METHODS), description=f"learned methods, from {tuple(METHODS)}")
    seeds: tuple[int, ...] = Field((0, 1), min_length=1)
    budget: str = Field("wall_clock", description="wall_clock (same training seconds) | images (same images)")
    wall_clock_s: float = Field(300.0, gt=0, description="training seconds per method and seed")
    images: int = Field(16384, ge=1, description="training images (episodes) per method and seed")
    split: str = Field("test", description="held-out split of the metric")
    latency_images: int = Field(64, ge=1, description="images timed for the policy's inference latency")

    @model_validator(mode="after")
    def _check(self) -> CompareConfig:
        unknown = set(self.methods) - set(METHODS)
        if unknown:
            raise ValueError(f"unknown methods {sorted(unknown)}; expected some of {tuple(METHODS)}")
        if self.budget not in ("wall_clock", "images"):
            raise ValueError(f"budget must be wall_clock or images, got {self.budget!r}")
        return self


def load_compare(path: str | Path, overrides: dict[str, Any] | None = None) -> tuple[CompareConfig, Config]:
    """The comparison config (with top-level `overrides`, e.g. {"budget": "images"}) and its base config."""
    try:
        raw = yaml.safe_load(Path(path).read_text()) or {}
        if not isinstance(raw, dict):
            raise ValueError(f"expected a mapping, got {type(raw).__name__}")
        ccfg = CompareConfig.model_validate({**raw, **(overrides or {})})
    except (OSError, ValueError, yaml.YAMLError, ValidationError) as e:
        raise ConfigError(f"compare config {path} is invalid: {e}") from None
    return ccfg, load_config(ccfg.base)


def method_config(base: Config, method: str, seed: int, ccfg: CompareConfig) -> Config:
    """The base config with a method's overrides, the seed and the budget applied."""
    raw = base.model_dump(mode="json")
    for section, fields in METHODS[method].items():
        raw[section].update(fields)
    raw["seed"] = seed
    budget = {"time_budget_s": ccfg.wall_clock_s, "image_budget": None}
    if ccfg.budget == "images":
        budget = {"time_budget_s": None, "image_budget": ccfg.images}
    raw["train"].update(iterations=10**6, **budget)
    return Config.model_validate(raw)


def policy_latency_ms(cfg: Config, checkpoint: str, n: int) -> tuple[float, int]:
    """(ms per image of greedy policy inference on `n` val images, policy parameter count)."""
    from envs.factory import CoreSource
    from posisp_dist.train.inference import load_policy, policy_pipelines
    from posisp_dist.train.report import stepwise_steps

    core = CoreSource(cfg, "val").get()
    module = load_policy(checkpoint)
    images = core.images[:n]
    policy_pipelines(module, images[:2], core.executor, core.preview_size, stepwise_steps(cfg))  # warm-up
    t0 = time.perf_counter()
    policy_pipelines(module, images, core.executor, core.preview_size, stepwise_steps(cfg))
    ms = 1000.0 * (time.perf_counter() - t0) / len(images)
    return ms, sum(p.numel() for p in module.parameters())


def learned_row(
    ccfg: CompareConfig, base: Config, method: str, seed: int, parent: str, progress: bool, baselines: bool
) -> dict:
    from posisp_dist.train.driver import train
    from posisp_dist.train.evaluate import evaluate_run

    cfg = method_config(base, method, seed, ccfg)
    t0 = time.perf_counter()
    summary = train(cfg, progress=progress, parent_run_id=parent)
    wall = time.perf_counter() - t0
    rows = evaluate_run(summary["run_id"], ccfg.split, summary["tracking_uri"], False, baselines)["rows"]
    learned = rows[-1]
    ms, n_params = policy_latency_ms(cfg, summary["checkpoint"], ccfg.latency_images)
    return {
        "method": method, "seed": seed, "run_id": summary["run_id"], "map": learned["map"], "map50": learned["map50"],
        "module_runs": summary["module_runs"], "task_images": summary["task_images"], "images": summary["images"],
        "train_seconds": summary["train_seconds"], "wall_seconds": round(wall, 1), "latency_ms": ms,
        "params": n_params, "fixed_rows": rows[:-1],
    }


def fixed_rows(payload_rows: list[dict], base: Config, seed: int) -> list[dict]:
    """Random search, camera ISP and input RAW; random search's compute is its search on val images."""
    from posisp_dist.baselines.table import random_pipelines
    from posisp_dist.isp.executor import sequence_lengths
    from posisp_dist.isp.registry import DEFAULT_REGISTRY

    bc = base.baselines
    tokens, _ = random_pipelines(np.random.default_rng(bc.seed), bc.n_pipelines, bc.max_len, DEFAULT_REGISTRY,
                                 base.isp.modules)
    search = {"module_runs": int(sequence_lengths(tokens, DEFAULT_REGISTRY.n_modules).sum()) * bc.search_images,
              "task_images": bc.n_pipelines * bc.search_images}
    none = {"module_runs": 0, "task_images": 0}
    return [
        {"method": r["method"], "seed": seed, "map": r["map"], "map50": r["map50"],
         **(search if r["method"] == "random_search" else none)}
        for r in payload_rows if r["method"] in FIXED
    ]


def aggregate(rows: list[dict]) -> list[dict]:
    """Mean ± std over seeds per method."""
    out = []
    for method in dict.fromkeys(r["method"] for r in rows):
        mine = [r for r in rows if r["method"] == method]
        agg: dict[str, Any] = {"method": method, "seeds": len(mine)}
        for key in ("map", "map50", "module_runs", "task_images", "train_seconds", "latency_ms", "params"):
            vals = [float(r[key]) for r in mine if key in r]
            if vals:
                agg[key], agg[f"{key}_std"] = float(np.mean(vals)), float(np.std(vals))
        out.append(agg)
    return out


def _cell(a: dict, key: str, fmt: str = ".1f") -> str:
    if key not in a:
        return "–"
    std = a[f"{key}_std"]
    return f"{a[key]:{fmt}} ± {std:{fmt}}" if a["seeds"] > 1 and std else f"{a[key]:{fmt}}"


def markdown(agg: list[dict], ccfg: CompareConfig) -> str:
    budget = f"{ccfg.wall_clock_s:g} s of training" if ccfg.budget == "wall_clock" else f"{ccfg.images} images"
    lines = [
        f"Budget per method and seed: {budget}; seeds {list(ccfg.seeds)}; split `{ccfg.split}`.",
        "",
        "| method | mAP@.5:.95 | mAP@.5 | ISP module runs | task-model images | train s | latency ms/img | params |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for a in agg:
        cells = [_cell(a, "map"), _cell(a, "map50"), _cell(a, "module_runs", ".0f"), _cell(a, "task_images", ".0f"),
                 _cell(a, "train_seconds", ".0f"), _cell(a, "latency_ms", ".2f"), _cell(a, "params", ".0f")]
        lines.append(f"| {a['method']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def metric_vs_compute_png(agg: list[dict], path: Path) -> Path:
    """mAP@.5:.95 against ISP module runs during training (log x), one marker per method."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.5, 4.2))
    ax = fig.add_subplot()
    for a in agg:
        x = max(a.get("module_runs", 0.0), 1.0)
        ax.errorbar(x, a["map"], yerr=a.get("map_std", 0.0), fmt="o", capsize=3, label=a["method"])
    ax.set_xscale("log")
    ax.set_xlabel("ISP module runs during training (1 = none)")
    ax.set_ylabel("held-out mAP@.5:.95")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    FigureCanvasAgg(fig).print_png(str(path))
    return path


def run_compare(ccfg: CompareConfig, base: Config, out_dir: str | Path, progress: bool = True) -> dict[str, Any]:
    """Train and evaluate every method for every seed (nested under one parent MLflow run)."""
    from posisp_dist.train.driver import open_tracker, resolve_paths

    base = resolve_paths(base)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tracker = open_tracker(base)
    tracker.start(run_name="compare", tags={"posisp.method": "compare"})
    with tracker:
        tracker.log_dict(ccfg.model_dump(mode="json"), "compare.json")
        rows: list[dict] = []
        for seed in ccfg.seeds:
            for method in ccfg.methods:
                first = method == ccfg.methods[0]  # the fixed rows: evaluated once per seed
                row = learned_row(ccfg, base, method, seed, str(tracker.run_id), progress, baselines=first)
                if first:
                    rows += fixed_rows(row.pop("fixed_rows"), method_config(base, method, seed, ccfg), seed)
                row.pop("fixed_rows", None)
                rows.append(row)
        agg = aggregate(rows)
        table = markdown(agg, ccfg)
        (out / "compare.md").write_text(table + "\n")
        tracker.log_artifact(out / "compare.md")
        tracker.log_artifact(metric_vs_compute_png(agg, out / "compare.png"))
        payload = {"config": ccfg.model_dump(mode="json"), "rows": rows, "aggregate": agg, "table": table,
                   "parent_run_id": tracker.run_id}
        tracker.log_dict(payload, "compare_rows.json")
    return payload
