"""The baseline table: clean sRGB (upper bound), input RAW, camera ISP and the best random pipeline."""

from __future__ import annotations

from types import ModuleType
from typing import Any

import numpy as np

from posisp_dist.config import Config
from posisp_dist.data.shards import RawBatch, RawDataset
from posisp_dist.isp.catalogue import registry_for
from posisp_dist.isp.executor import ISPExecutor
from posisp_dist.isp.registry import Registry
from posisp_dist.isp.render import camera_isp, input_raw
from posisp_dist.tasks.base import TaskModel

REFERENCES = ("clean_srgb", "input_raw", "camera_isp")


def render_reference(batch: RawBatch, kind: str, xp: ModuleType = np) -> Any:
    """(N, H, W, 3) float32 rendering of a batch by one of the fixed references."""
    if kind == "clean_srgb":
        return xp.asarray(batch.srgb, dtype=xp.float32) / 255.0
    rgb = input_raw(xp.asarray(batch.raw), batch.black_level, batch.white_level, batch.cfa, xp)
    if kind == "input_raw":
        return rgb
    if kind == "camera_isp":
        return camera_isp(rgb, xp.asarray(batch.cam2rgb), xp)
    raise ValueError(f"unknown reference rendering {kind!r}; expected one of {REFERENCES}")


def random_pipelines(
    rng: np.random.Generator, n: int, max_len: int, registry: Registry, allowed: tuple[str, ...] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """n random pipelines: 1..max_len distinct modules in random order, uniform normalised params."""
    ids = np.array([registry.index(a) for a in (allowed or registry.names)])
    tokens = np.full((n, max_len), registry.n_modules, np.int64)
    for i in range(n):
        k = int(rng.integers(1, min(max_len, len(ids)) + 1))
        tokens[i, :k] = rng.choice(ids, size=k, replace=False)
    return tokens, rng.random((n, registry.n_params)).astype(np.float32)


def run_fixed(executor: ISPExecutor, images: Any, tokens: np.ndarray, params: np.ndarray) -> Any:
    """Apply one pipeline (tokens (L,), params (P,)) to every image of a batch."""
    b = images.shape[0]
    return executor.run(images, np.broadcast_to(tokens, (b, len(tokens))), np.broadcast_to(params, (b, len(params))))


def random_search(cfg: Config, task: TaskModel, val: RawBatch, executor: ISPExecutor) -> dict[str, Any]:
    """Best of `n_pipelines` random fixed pipelines by mean task score on (a subset of) the val split, with the
    compute the search spent (ISP module runs, task-model images)."""
    bc = cfg.baselines
    rng = np.random.default_rng(bc.seed)
    tokens, params = random_pipelines(rng, bc.n_pipelines, bc.max_len, executor.registry, cfg.isp.modules)
    sub = val.take(np.arange(min(len(val), bc.search_images)))
    base = render_reference(sub, "input_raw", executor.xp)
    runs_before = executor.stats.module_runs
    scores = [
        float(np.mean(task.score(run_fixed(executor, base, t, p), sub.targets)))
        for t, p in zip(tokens, params, strict=True)
    ]
    best = int(np.argmax(scores))
    return {"tokens": tokens[best], "params": params[best], "val_score": scores[best], "tried": len(scores),
            "module_runs": executor.stats.module_runs - runs_before, "task_images": len(scores) * len(sub)}


def baseline_table(
    cfg: Config, task: TaskModel, split: str = "test", xp: ModuleType = np, registry: Registry | None = None
) -> list[dict[str, Any]]:
    """Rows {method, <the task's metrics>, score[, pipeline]} on `split` for the references and random search
    (over `registry`, by default the config's modules)."""
    data = RawDataset(cfg.data.root, split).load()
    rows = []
    for kind in REFERENCES:
        img = render_reference(data, kind, xp)
        rows.append(
            {"method": kind, **task.evaluate(img, data.targets), "score": float(np.mean(task.score(img, data.targets)))}
        )
    executor = ISPExecutor(registry or registry_for(cfg.isp.modules), xp, cfg.isp.kernels)
    found = random_search(cfg, task, RawDataset(cfg.data.root, "val").load(), executor)
    img = run_fixed(executor, render_reference(data, "input_raw", xp), found["tokens"], found["params"])
    rows.append(
        {
            "method": "random_search",
            **task.evaluate(img, data.targets),
            "score": float(np.mean(task.score(img, data.targets))),
            "pipeline": executor.decode(found["tokens"], found["params"]).to_json(),
            "pipelines_tried": found["tried"],
            "module_runs": found["module_runs"],  # the search's compute (the references spend none)
            "task_images": found["task_images"],
        }
    )
    return rows


def format_table(rows: list[dict[str, Any]], metrics: list[dict[str, Any]]) -> str:
    """Markdown: method | each metric (its label) | mean task score; `metrics` as in an eval payload."""
    head = " | ".join(m["label"] for m in metrics)
    lines = [f"| method | {head} | mean task score |", "|---" * (len(metrics) + 2) + "|"]
    lines += [
        f"| {r['method']} | " + " | ".join(f"{r[m['key']]:.1f}" for m in metrics) + f" | {r['score']:.3f} |"
        for r in rows
    ]
    return "\n".join(lines)
