"""The `posisp` command."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from posisp_dist.config import ConfigError, load_config
from posisp_dist.train.tracking import TrackingError


def _write_json(path: str | None, payload: Any) -> None:
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(payload, indent=2, default=str))


def cmd_data_build(args: argparse.Namespace) -> int:
    from posisp_dist.data.build import build_dataset

    cfg = load_config(args.config)
    root = build_dataset(cfg.data, cfg.seed, force=args.force, progress=not args.quiet)
    print(f"dataset ready at {root}")
    return 0


def cmd_baselines(args: argparse.Namespace) -> int:
    from posisp_dist.baselines.table import baseline_table, format_table
    from posisp_dist.data.build import build_dataset
    from posisp_dist.isp.xp import get_xp
    from posisp_dist.tasks import load_task_model

    cfg = load_config(args.config)
    build_dataset(cfg.data, cfg.seed, progress=not args.quiet)
    task = load_task_model(cfg.task, cfg.data.root, progress=not args.quiet)
    rows = baseline_table(cfg, task, args.split, get_xp(cfg.isp.backend))
    print(format_table(rows))
    _write_json(args.json, {"split": args.split, "config": str(args.config), "rows": rows})
    return 0


def cmd_bench_isp(args: argparse.Namespace) -> int:
    from posisp_dist.benchmarks import isp

    result = isp.run(tuple(args.sizes), args.batch, args.min_time)
    print(isp.format_rows(result))
    _write_json(args.json, result)
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from posisp_dist.train.driver import train

    if not args.config and not args.resume:
        raise ValueError("train needs --config (a new run) or --resume RUN_ID")
    overrides = {"train.iterations": args.iterations} if args.iterations and args.config else None
    cfg = load_config(args.config, overrides) if args.config and not args.resume else None
    if args.resume and args.config:  # the run's own config wins; --config only names the tracking store
        args.tracking_uri = args.tracking_uri or load_config(args.config).tracking.uri
    summary = train(
        cfg,
        resume_run_id=args.resume,
        tracking_uri=args.tracking_uri,
        iterations=args.iterations,
        progress=not args.quiet,
    )
    print(f"MLflow run: {summary['run_id']}")
    print(json.dumps({k: v for k, v in summary.items() if k != "run_id"}, indent=2, default=str))
    if args.eval:
        from posisp_dist.baselines.table import format_table
        from posisp_dist.train.evaluate import evaluate_run

        payload = evaluate_run(summary["run_id"], args.eval, args.tracking_uri or _tracking_uri(summary), False)
        print(format_table(payload["rows"]))
        summary["eval"] = payload
    _write_json(args.json, summary)
    return 0


def _tracking_uri(summary: dict[str, Any]) -> str:
    return str(summary["tracking_uri"])


def cmd_eval(args: argparse.Namespace) -> int:
    from posisp_dist.baselines.table import format_table
    from posisp_dist.train.evaluate import evaluate_run

    payload = evaluate_run(args.run, args.split, args.tracking_uri, progress=not args.quiet)
    print(format_table(payload["rows"]))
    _write_json(args.json, payload)
    return 0


def cmd_apply(args: argparse.Namespace) -> int:
    from posisp_dist.isp.executor import ISPExecutor
    from posisp_dist.isp.registry import DEFAULT_REGISTRY
    from posisp_dist.isp.xp import get_xp
    from posisp_dist.train.apply import apply_files
    from posisp_dist.train.driver import fetch_run
    from posisp_dist.train.inference import load_policy

    cfg, ckpt, _ = fetch_run(args.run, args.tracking_uri)
    executor = ISPExecutor(DEFAULT_REGISTRY.subset(cfg.isp.modules), get_xp(cfg.isp.backend))
    from posisp_dist.train.report import stepwise_steps

    records = apply_files(load_policy(ckpt), executor, cfg.env.preview_size, args.inputs, args.output,
                          stepwise_steps(cfg))
    for r in records:
        print(f"{r['input']} -> {r['output']}: {' > '.join(r['modules']) or '(no modules)'}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from posisp_dist.baselines.compare import load_compare, run_compare

    ccfg, base = load_compare(args.config)
    payload = run_compare(ccfg, base, args.out, progress=not args.quiet)
    print(payload["table"])
    print(f"MLflow parent run: {payload['parent_run_id']}")
    _write_json(args.json, payload)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="posisp", description="Task-aware ISP optimisation (POS-ISP) on Ray.")
    sub = p.add_subparsers(dest="command", required=True)

    data = sub.add_parser("data", help="dataset commands").add_subparsers(dest="data_command", required=True)
    b = data.add_parser("build", help="generate the built-in low-light raw dataset as Parquet shards")
    b.add_argument("--config", required=True)
    b.add_argument("--force", action="store_true", help="rebuild even if a matching dataset exists")
    b.add_argument("--quiet", action="store_true")
    b.set_defaults(fn=cmd_data_build)

    bl = sub.add_parser("baselines", help="task metric of clean sRGB, input RAW, camera ISP and random search")
    bl.add_argument("--config", required=True)
    bl.add_argument("--split", default="test", choices=("train", "val", "test"))
    bl.add_argument("--json", help="write the rows to this JSON file")
    bl.add_argument("--quiet", action="store_true")
    bl.set_defaults(fn=cmd_baselines)

    tr = sub.add_parser("train", help="train sequence-level PPO on Ray, tracked in MLflow")
    tr.add_argument("--config", help="experiment YAML (e.g. configs/quick.yaml)")
    tr.add_argument("--resume", metavar="RUN_ID", help="continue this MLflow run from its last checkpoint")
    tr.add_argument("--iterations", type=int, help="override train.iterations (total, including resumed ones)")
    tr.add_argument("--tracking-uri", help="MLflow tracking URI (default: the config's, else the local SQLite store)")
    tr.add_argument("--eval", choices=("val", "test"), help="after training, run `posisp eval` on this split")
    tr.add_argument("--json", help="write the run summary to this JSON file")
    tr.add_argument("--quiet", action="store_true")
    tr.set_defaults(fn=cmd_train)

    ev = sub.add_parser("eval", help="baseline rows plus the learned policy's greedy pipelines on a split")
    ev.add_argument("--run", required=True, metavar="RUN_ID")
    ev.add_argument("--split", default="test", choices=("train", "val", "test"))
    ev.add_argument("--tracking-uri")
    ev.add_argument("--json", help="write the rows and per-image pipelines to this JSON file")
    ev.add_argument("--quiet", action="store_true")
    ev.set_defaults(fn=cmd_eval)

    ap = sub.add_parser("apply", help="process DNG / raw .npz files with a trained policy")
    ap.add_argument("--run", required=True, metavar="RUN_ID")
    ap.add_argument("inputs", nargs="+", help="DNG (or any LibRaw raw) or .npz files")
    ap.add_argument("-o", "--output", required=True, help="directory for PNGs and pipeline JSON")
    ap.add_argument("--tracking-uri")
    ap.set_defaults(fn=cmd_apply)

    cp = sub.add_parser("compare", help="sequence PPO vs image-blind vs step-wise PPO vs search, equal budgets")
    cp.add_argument("--config", required=True, help="comparison YAML (e.g. configs/compare.yaml)")
    cp.add_argument("--out", default="out/compare", help="directory for compare.md and compare.png")
    cp.add_argument("--json", help="write every row and the aggregate to this JSON file")
    cp.add_argument("--quiet", action="store_true")
    cp.set_defaults(fn=cmd_compare)

    bench = sub.add_parser("bench", help="benchmarks").add_subparsers(dest="bench_command", required=True)
    bi = bench.add_parser("isp", help="ISP module and pipeline throughput (NumPy, and CuPy when present)")
    bi.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    bi.add_argument("--batch", type=int, default=32)
    bi.add_argument("--min-time", type=float, default=0.5, help="seconds of repetitions per measurement")
    bi.add_argument("--json")
    bi.set_defaults(fn=cmd_bench_isp)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.fn(args))
    except (ConfigError, FileNotFoundError, ValueError, KeyError, TrackingError) as e:
        print(f"posisp: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
