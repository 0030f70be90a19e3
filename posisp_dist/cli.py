"""The `posisp` command."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import sys
from pathlib import Path
from typing import Any

import yaml

from posisp_dist.cluster import check_reachable, effective_address
from posisp_dist.config import Config, ConfigError, load_config
from posisp_dist.paths import ephemeral_home_warning
from posisp_dist.train.tracking import TrackingError


def _check_json_path(path: str | None) -> None:
    """Refuse, before any work, a --json path that cannot be written (a folder, or under a file)."""
    if not path:
        return
    p = Path(path)
    if p.is_dir():
        raise ValueError(f"--json {p} is a folder; give a file name")
    for parent in (p.parent, *p.parent.parents):
        if parent.exists():
            if not parent.is_dir():
                raise ValueError(f"--json {p} cannot be written: {parent} is a file, not a folder")
            return


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive whole number, got {text}")
    return value


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


def cmd_data_ingest(args: argparse.Namespace) -> int:
    from posisp_dist.data.ingest import IngestOptions, ingest
    from posisp_dist.paths import resolve

    lists = None
    if args.split:
        pairs = [item.partition("=") for item in args.split]
        if any(not sep or not name for name, sep, _ in pairs):
            raise ValueError(f"--split expects SPLIT=FILE (e.g. train=train.txt), got {args.split}")
        lists = {name: Path(path) for name, _, path in pairs}
    opts = IngestOptions(
        raw_dir=Path(args.raw), root=resolve(args.root), coco=tuple(map(Path, args.coco or ())),
        voc=tuple(map(Path, args.voc or ())), image_size=args.image_size,
        classes=tuple(args.classes) if args.classes else None, split_lists=lists, fractions=tuple(args.fractions),
        seed=args.seed, shard_size=args.shard_size, reference_dir=Path(args.reference) if args.reference else None,
        force=args.force, progress=not args.quiet,
    )  # fmt: skip
    report = ingest(opts)
    print(report.format())
    _write_json(args.json, {"root": str(report.root), "counts": report.counts, "skipped": report.skipped})
    return 0


def cmd_data_verify(args: argparse.Namespace) -> int:
    from posisp_dist.data.ingest import verify_ingested

    problems = verify_ingested(args.root, args.raw)
    print("\n".join(problems) or f"{args.root}: every split file matches its SHA-256")
    return 1 if problems else 0


def cmd_baselines(args: argparse.Namespace) -> int:
    from posisp_dist.baselines.table import baseline_table, format_table
    from posisp_dist.data.build import build_dataset
    from posisp_dist.isp.xp import get_xp
    from posisp_dist.tasks import load_task_model

    cfg = load_config(args.config)
    build_dataset(cfg.data, cfg.seed, progress=not args.quiet)
    task = load_task_model(cfg.task, cfg.data.root, progress=not args.quiet)
    rows = baseline_table(cfg, task, args.split, get_xp(cfg.isp.backend))
    print(format_table(rows, [m.to_json() for m in task.metrics]))
    _write_json(args.json, {"split": args.split, "config": str(args.config), "rows": rows})
    return 0


def cmd_bench_isp(args: argparse.Namespace) -> int:
    from posisp_dist.benchmarks import isp

    result = isp.run(tuple(args.sizes), args.batch, args.min_time, tuple(args.kernels))
    print(isp.format_rows(result))
    _write_json(args.json, result)
    return 0


def cmd_bench_peer(args: argparse.Namespace) -> int:
    from posisp_dist.benchmarks import peer

    result = peer.run(tuple(args.sizes), args.batch, args.steps, args.min_time)
    print(peer.format_rows(result))
    _write_json(args.json, result)
    return 0


def cmd_bench_runtime(args: argparse.Namespace) -> int:
    from posisp_dist.benchmarks import runtime

    result = runtime.run(load_config(args.config, parse_sets(args.set)), args.timesteps)
    print(runtime.format_rows(result))
    _write_json(args.json, result)
    return 0


def cmd_task_ship(args: argparse.Namespace) -> int:
    from posisp_dist.data.build import build_dataset
    from posisp_dist.data.shards import RawDataset
    from posisp_dist.tasks import shipped

    cfg = load_config(args.config)
    build_dataset(cfg.data, cfg.seed, progress=False)
    path, same = shipped.retrain(cfg.task, RawDataset(cfg.data.root, "train"), args.check)
    if args.check:
        print(f"{path.name}: {'identical to' if same else 'DIFFERS from'} the shipped file")
    else:
        print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB) and its entry in {shipped.MANIFEST.name}")
    return 0 if same else 1


def cmd_bench_loop(args: argparse.Namespace) -> int:
    from posisp_dist.benchmarks import loop

    configs = [load_config(path, parse_sets(args.set)) for path in args.config]  # all checked before any runs
    results = [loop.run(cfg, args.timesteps, args.iterations) for cfg in configs]
    rows = [{"config": path, **row} for path, r in zip(args.config, results, strict=True) for row in r["rows"]]
    result = {**results[0], "rows": rows}
    result["command"] = shlex.join(["posisp", *sys.argv[1:]])
    print(loop.format_rows(result))
    _write_json(args.json, result)
    return 0


def parse_sets(pairs: list[str] | None) -> dict[str, Any]:
    """`--set key=value` pairs -> dotted config overrides; values are read as YAML (numbers, lists, null)."""
    out: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--set expects section.field=value (e.g. train.num_env_runners=4), got {pair!r}")
        try:
            out[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError as e:
            raise ValueError(f"--set {pair!r}: the value is not valid YAML ({e})") from None
    return out


def _check_new_run(cfg: Config, tracking_uri: str | None) -> None:
    """Fail fast on an unreachable cluster; warn when outputs would vanish with a Ray job's temp working_dir."""
    check_reachable(effective_address(cfg.train.ray_address))
    relative = [p for p in (cfg.data.root, cfg.task.cache_dir, cfg.train.out_dir) if not Path(p).is_absolute()]
    if not (tracking_uri or cfg.tracking.uri or os.environ.get("MLFLOW_TRACKING_URI")):
        relative.append("the default MLflow store")
    warning = ephemeral_home_warning(relative)
    if warning:
        print(f"posisp: warning: {warning}", file=sys.stderr)


def _training_line(summary: dict[str, Any]) -> str:
    """What the run did, in two lines (the whole summary goes to --json and to the run's summary.json)."""
    line = (
        f"trained {summary['iterations']} iterations, {summary['images']:,} images in {summary['train_seconds']:.0f} s"
    )
    if summary.get("best_val_iteration"):
        line += f"; kept iteration {summary['best_val_iteration']} (best greedy val {summary['metrics'][0]['label']})"
    sequence = " -> ".join(summary.get("top_sequence") or []) or "(none)"
    values = ", ".join(f"{m['label']} {summary['val_metrics'][m['key']]:.1f}" for m in summary["metrics"])
    return f"{line}\nval {values}; most used pipeline: {sequence}"


def _print_run(summary: dict[str, Any]) -> None:
    """Say which run this was and where it lives, so it can be found after a `ray job submit`."""
    uri = _tracking_uri(summary)
    print(f"MLflow run: {summary['run_id']}")
    print(f"MLflow tracking URI: {uri}")
    print(f"  browse: mlflow ui --backend-store-uri {uri}")
    print(f"  evaluate: posisp eval --run {summary['run_id']} --tracking-uri {uri} --split test")


def cmd_train(args: argparse.Namespace) -> int:
    from posisp_dist.train.driver import train

    if not args.config and not args.resume:
        raise ValueError("train needs --config (a new run) or --resume RUN_ID")
    if args.resume and args.set:
        raise ValueError("--set applies to new runs; a resumed run keeps the config stored with it")
    overrides = parse_sets(args.set)
    if args.iterations and args.config:
        overrides["train.iterations"] = args.iterations
    cfg = load_config(args.config, overrides or None) if args.config and not args.resume else None
    if cfg is not None:
        _check_new_run(cfg, args.tracking_uri)
    if args.resume and args.config:  # the run's own config wins; --config only names the tracking store
        args.tracking_uri = args.tracking_uri or load_config(args.config).tracking.uri
    summary = train(
        cfg,
        resume_run_id=args.resume,
        tracking_uri=args.tracking_uri,
        iterations=args.iterations,
        progress=not args.quiet,
    )
    print(_training_line(summary))
    _print_run(summary)
    if args.eval:
        from posisp_dist.baselines.table import format_table
        from posisp_dist.train.evaluate import evaluate_run

        payload = evaluate_run(summary["run_id"], args.eval, args.tracking_uri or _tracking_uri(summary), False)
        print(format_table(payload["rows"], payload["metrics"]))
        summary["eval"] = payload
    _write_json(args.json, summary)
    return 0


def _tracking_uri(summary: dict[str, Any]) -> str:
    return str(summary["tracking_uri"])


def cmd_eval(args: argparse.Namespace) -> int:
    from posisp_dist.baselines.table import format_table
    from posisp_dist.train.evaluate import evaluate_run

    payload = evaluate_run(args.run, args.split, args.tracking_uri, progress=not args.quiet,
                           rebuild_data=args.rebuild_data)
    print(format_table(payload["rows"], payload["metrics"]))
    _write_json(args.json, payload)
    return 0


def cmd_apply(args: argparse.Namespace) -> int:
    from posisp_dist.isp.executor import ISPExecutor
    from posisp_dist.isp.registry import DEFAULT_REGISTRY
    from posisp_dist.isp.xp import get_xp
    from posisp_dist.train.apply import apply_files, expand_inputs, output_dir
    from posisp_dist.train.inference import load_policy
    from posisp_dist.train.storage import fetch_run

    output_dir(args.output)  # a bad -o or a folder without raw files fails before the policy loads
    expand_inputs(args.inputs)
    cfg, ckpt, _ = fetch_run(args.run, args.tracking_uri)
    executor = ISPExecutor(DEFAULT_REGISTRY.subset(cfg.isp.modules), get_xp(cfg.isp.backend), cfg.isp.kernels)
    from posisp_dist.train.inference import stepwise_steps

    result = apply_files(
        load_policy(ckpt), executor, cfg.env.preview_size, args.inputs, args.output, stepwise_steps(cfg),
        progress=not args.quiet,
    )
    for r in result.records:
        print(f"{r['input']} -> {r['output']}: {' > '.join(r['modules']) or '(no modules)'}")
    if result.contact_sheet:
        print(f"contact sheet: {result.contact_sheet}")
    for f in result.failures:
        print(f"posisp: error: {f['error']}" if f["input"] in f["error"] else f"{f['input']}: {f['error']}",
              file=sys.stderr)
    if result.failures:
        print(f"posisp: {len(result.failures)} of {len(result.failures) + len(result.records)} inputs failed",
              file=sys.stderr)
    return 1 if result.failures else 0


def cmd_compare(args: argparse.Namespace) -> int:
    from posisp_dist.train.compare import load_compare, run_compare

    overrides = {"budget": args.budget} if args.budget else {}
    if args.seeds:
        overrides["seeds"] = args.seeds
    ccfg, base = load_compare(args.config, overrides)
    payload = run_compare(ccfg, base, args.out, progress=not args.quiet, out_json=args.json)
    print(payload["table"])
    print(payload["reach_table"])
    print(f"MLflow parent run: {payload['parent_run_id']}")
    _write_json(args.json, payload)
    return 0


def cmd_seeds(args: argparse.Namespace) -> int:
    from posisp_dist.train.seeds import markdown, run_seeds

    result = run_seeds(
        args.config, args.seeds, parse_sets(args.set), args.ppo_params, progress=not args.quiet, out_json=args.json
    )
    print(markdown(result))
    _write_json(args.json, result)
    return 0


def cmd_cluster_check(args: argparse.Namespace) -> int:
    from posisp_dist.cluster import validate_cluster_yaml

    for path in args.files:
        config = validate_cluster_yaml(path)
        types = ", ".join(
            f"{name} {t.get('min_workers', 0)}-{t.get('max_workers', 0)}"
            for name, t in config["available_node_types"].items()
        )
        print(f"{path}: ok ({config['provider']['type']}; head type {config['head_node_type']}; worker nodes {types})")
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
    ig = data.add_parser("ingest", help="your raw files (DNG, CR2, NEF, ARW, ...) + COCO / VOC boxes -> shards")
    ig.add_argument("--raw", required=True, help="folder of raw files (anything LibRaw reads)")
    ig.add_argument("--root", required=True, help="data root to write (data.root of a `source: ingested` config)")
    ig.add_argument("--coco", action="append", metavar="JSON", help="COCO detection JSON (repeatable)")
    ig.add_argument("--voc", action="append", metavar="PATH", help="folder of VOC XML files, or one (repeatable)")
    ig.add_argument("--image-size", type=int, default=512, help="letterboxed square side (multiple of 32)")
    ig.add_argument("--classes", nargs="+", help="class names in label order (default: all the annotations name)")
    ig.add_argument("--split", action="append", metavar="SPLIT=FILE", help="given split: a text file of file names "
                    "per line, for each of train, val and test (default: drawn with --seed and --fractions)")
    ig.add_argument("--fractions", type=float, nargs=3, default=(0.8, 0.1, 0.1), metavar=("TRAIN", "VAL", "TEST"))
    ig.add_argument("--seed", type=int, default=0, help="seed of the drawn split")
    ig.add_argument("--shard-size", type=int, default=200, help="images per Parquet shard")
    ig.add_argument("--reference", help="folder of reference renders (same stem as each raw; default: LibRaw's)")
    ig.add_argument("--force", action="store_true", help="replace the dataset already under --root")
    ig.add_argument("--json", help="write the counts and the skip report to this JSON file")
    ig.add_argument("--quiet", action="store_true")
    ig.set_defaults(fn=cmd_data_ingest)
    vf = data.add_parser("verify", help="recheck an ingested root's split files against their SHA-256")
    vf.add_argument("--root", required=True)
    vf.add_argument("--raw", required=True, help="the folder that was ingested")
    vf.set_defaults(fn=cmd_data_verify)

    bl = sub.add_parser("baselines", help="task metric of clean sRGB, input RAW, camera ISP and random search")
    bl.add_argument("--config", required=True)
    bl.add_argument("--split", default="test", choices=("train", "val", "test"))
    bl.add_argument("--json", help="write the rows to this JSON file")
    bl.add_argument("--quiet", action="store_true")
    bl.set_defaults(fn=cmd_baselines)

    tr = sub.add_parser("train", help="train sequence-level PPO on Ray, tracked in MLflow")
    tr.add_argument("--config", help="experiment YAML (e.g. configs/quick.yaml)")
    tr.add_argument("--resume", metavar="RUN_ID", help="continue this MLflow run from its last checkpoint")
    tr.add_argument("--iterations", type=_positive_int,
                    help="override train.iterations (total, including resumed ones)")
    tr.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="override one config field, e.g. --set train.num_env_runners=8 (repeatable; YAML values)",
    )
    tr.add_argument(
        "--tracking-uri",
        help="MLflow tracking URI (default: the config's tracking.uri, else $MLFLOW_TRACKING_URI, else the SQLite "
        "store under $POSISP_HOME or the CWD: .posisp/mlflow/mlflow.db)",
    )
    tr.add_argument("--eval", choices=("val", "test"), help="after training, run `posisp eval` on this split")
    tr.add_argument("--json", help="write the run summary to this JSON file")
    tr.add_argument("--quiet", action="store_true")
    tr.set_defaults(fn=cmd_train)

    ev = sub.add_parser("eval", help="baseline rows plus the learned policy's greedy pipelines on a split")
    ev.add_argument("--run", required=True, metavar="RUN_ID")
    ev.add_argument("--split", default="test", choices=("train", "val", "test"))
    ev.add_argument("--tracking-uri")
    ev.add_argument("--json", help="write the rows and per-image pipelines to this JSON file")
    ev.add_argument("--rebuild-data", action="store_true",
                    help="regenerate the run's built-in data under data.root when another dataset is there")
    ev.add_argument("--quiet", action="store_true")
    ev.set_defaults(fn=cmd_eval)

    ap = sub.add_parser("apply", help="process DNG / raw .npz files with a trained policy")
    ap.add_argument("--run", required=True, metavar="RUN_ID")
    ap.add_argument("inputs", nargs="+", help="DNG (or any LibRaw raw) or .npz files, or folders of them")
    ap.add_argument("-o", "--output", required=True, help="directory for PNGs, pipeline JSON and the contact sheet")
    ap.add_argument("--tracking-uri")
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    ap.set_defaults(fn=cmd_apply)

    cp = sub.add_parser("compare", help="sequence PPO vs image-blind vs step-wise PPO vs search, equal budgets")
    cp.add_argument("--config", required=True, help="comparison YAML (e.g. configs/compare.yaml)")
    cp.add_argument("--out", default="out/compare", help="directory for compare.md and compare.png")
    cp.add_argument("--budget", choices=("wall_clock", "images"), help="override the config's equal budget")
    cp.add_argument("--seeds", type=int, nargs="+", help="override the config's seeds")
    cp.add_argument("--json", help="write every row and the aggregate to this JSON file")
    cp.add_argument("--quiet", action="store_true")
    cp.set_defaults(fn=cmd_compare)

    sd = sub.add_parser("seeds", help="train + evaluate one config over seeds (data and task model made per seed)")
    sd.add_argument("--config", required=True)
    sd.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    sd.add_argument("--set", action="append", metavar="KEY=VALUE", help="config override, repeatable")
    sd.add_argument("--ppo-params", action="store_true", help="also the same budget with PPO-learned parameters")
    sd.add_argument("--json", help="write per-seed rows and the aggregate to this JSON file")
    sd.add_argument("--quiet", action="store_true")
    sd.set_defaults(fn=cmd_seeds)

    cl = sub.add_parser("cluster", help="Ray cluster YAMLs").add_subparsers(dest="cluster_command", required=True)
    cc = cl.add_parser("check", help="run Ray's own `ray up` config checks on cluster YAMLs, offline")
    cc.add_argument("files", nargs="+", help="e.g. cluster/aws-gpu.yaml")
    cc.set_defaults(fn=cmd_cluster_check)

    task = sub.add_parser("task", help="task-model commands").add_subparsers(dest="task_command", required=True)
    ts = task.add_parser("ship", help="retrain a config's built-in task model from scratch and ship it in the package")
    ts.add_argument("--config", default="configs/quick.yaml")
    ts.add_argument("--check", action="store_true", help="compare with the shipped file instead of writing it")
    ts.set_defaults(fn=cmd_task_ship)
    bench = sub.add_parser("bench", help="benchmarks").add_subparsers(dest="bench_command", required=True)
    bi = bench.add_parser("isp", help="ISP module and pipeline throughput (NumPy, and CuPy when present)")
    bi.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    bi.add_argument("--batch", type=int, default=32)
    bi.add_argument("--min-time", type=float, default=0.5, help="seconds of repetitions per measurement")
    bi.add_argument("--kernels", nargs="+", choices=("fast", "reference"), default=["fast", "reference"])
    bi.add_argument("--json")
    bi.set_defaults(fn=cmd_bench_isp)
    bp = bench.add_parser("peer", help="our executor vs the torch peer: pipeline once, and AdaptiveISP's K steps")
    bp.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    bp.add_argument("--batch", type=int, default=32)
    bp.add_argument("--steps", type=int, default=5, help="AdaptiveISP steps K")
    bp.add_argument("--min-time", type=float, default=0.5)
    bp.add_argument("--json")
    bp.set_defaults(fn=cmd_bench_peer)
    br = bench.add_parser("runtime", help="env steps/s of one EnvRunner, policy latency, ISP peak memory")
    br.add_argument("--config", default="configs/quick.yaml")
    br.add_argument("--set", action="append", metavar="KEY=VALUE", help="config override (repeatable)")
    br.add_argument("--timesteps", type=int, default=512, help="env steps sampled per measurement")
    br.add_argument("--json")
    br.set_defaults(fn=cmd_bench_runtime)
    bl = bench.add_parser("loop", help="the training loop against its floor: task fwd+bwd, pathwise EnvRunner, "
                          "whole iterations")
    bl.add_argument("--config", nargs="+", default=["configs/quick.yaml"], help="one row per config")
    bl.add_argument("--set", action="append", metavar="KEY=VALUE", help="config override (repeatable)")
    bl.add_argument("--timesteps", type=int, default=128, help="pipelines one EnvRunner samples for (b)")
    bl.add_argument("--iterations", type=int, default=5, help="timed training iterations for (c), after a warm-up")
    bl.add_argument("--json")
    bl.set_defaults(fn=cmd_bench_loop)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        _check_json_path(getattr(args, "json", None))  # found now, not after the work it would record
        return int(args.fn(args))
    except (ConfigError, FileNotFoundError, ValueError, KeyError, TrackingError, ConnectionError) as e:
        print(f"posisp: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:  # SIGINT or SIGTERM (train/signals.py): one line, the run is already KILLED
        from posisp_dist.train.signals import received_signal

        signum = int(getattr(e, "signum", 0) or received_signal() or signal.SIGINT)
        print(f"posisp: {e or 'interrupted'}; a training run in progress is marked KILLED", file=sys.stderr)
        return 128 + signum


if __name__ == "__main__":
    sys.exit(main())
