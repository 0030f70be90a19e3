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
from posisp_dist.commands import COMMANDS, GROUPS
from posisp_dist.config import Config, ConfigError, load_config
from posisp_dist.paths import ephemeral_home_warning
from posisp_dist.runs.tracking import TrackingError


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


def cmd_bench_scaling(args: argparse.Namespace) -> int:
    from posisp_dist.benchmarks import scaling

    if 1 not in args.runners:
        raise ValueError("--runners must include 1: efficiency is relative to one EnvRunner")
    result = scaling.run(load_config(args.config), args.runners, args.iterations, args.warmup, args.steps_per_runner)
    result["command"] = shlex.join(["posisp", *sys.argv[1:]])
    print(scaling.format_rows(result["rows"]))
    _write_json(args.json, result)
    return 0


def cmd_bench_signal(args: argparse.Namespace) -> int:
    from posisp_dist.benchmarks import signal as signal_bench

    result = signal_bench.run(args.runs, args.tracking_uri)
    print(json.dumps(result["spearman_vs_val_map"], indent=2))
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
        from posisp_dist.trained.evaluate import evaluate_run

        payload = evaluate_run(summary["run_id"], args.eval, args.tracking_uri or _tracking_uri(summary), False)
        print(format_table(payload["rows"], payload["metrics"]))
        summary["eval"] = payload
    _write_json(args.json, summary)
    return 0


def _tracking_uri(summary: dict[str, Any]) -> str:
    return str(summary["tracking_uri"])


def cmd_eval(args: argparse.Namespace) -> int:
    from posisp_dist.baselines.table import format_table
    from posisp_dist.trained.evaluate import evaluate_run

    payload = evaluate_run(args.run, args.split, args.tracking_uri, progress=not args.quiet,
                           rebuild_data=args.rebuild_data)
    print(format_table(payload["rows"], payload["metrics"]))
    _write_json(args.json, payload)
    return 0


def cmd_apply(args: argparse.Namespace) -> int:
    from posisp_dist.isp.catalogue import registry_for
    from posisp_dist.isp.executor import ISPExecutor
    from posisp_dist.isp.xp import get_xp
    from posisp_dist.runs.storage import fetch_run
    from posisp_dist.trained.apply import apply_files, expand_inputs, output_dir
    from posisp_dist.trained.inference import load_policy

    output_dir(args.output)  # a bad -o or a folder without raw files fails before the policy loads
    expand_inputs(args.inputs)
    cfg, ckpt, _ = fetch_run(args.run, args.tracking_uri)
    executor = ISPExecutor(registry_for(cfg.isp.modules), get_xp(cfg.isp.backend), cfg.isp.kernels)
    from posisp_dist.trained.inference import stepwise_steps

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
    from posisp_dist.experiments.compare import load_compare, run_compare

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
    from posisp_dist.experiments.seeds import markdown, run_seeds

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
    """The `posisp` parser from the `COMMANDS` table: one sub-parser per row, groups made on first use."""
    p = argparse.ArgumentParser(prog="posisp", description="Task-aware ISP optimisation (POS-ISP) on Ray.")
    top = p.add_subparsers(dest="command", required=True)
    groups: dict[str, Any] = {}
    for words, handler, help_text, options in COMMANDS:
        *group, name = words.split()
        sub = top
        if group:
            if group[0] not in groups:
                groups[group[0]] = top.add_parser(group[0], help=GROUPS[group[0]]).add_subparsers(
                    dest=f"{group[0]}_command", required=True)
            sub = groups[group[0]]
        cmd = sub.add_parser(name, help=help_text)
        for flags, kwargs in options:
            cmd.add_argument(*flags, **kwargs)
        cmd.set_defaults(fn=globals()[handler])
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        _check_json_path(getattr(args, "json", None))  # found now, not after the work it would record
        return int(args.fn(args))
    except (ConfigError, FileNotFoundError, ValueError, KeyError, TrackingError, ConnectionError) as e:
        print(f"posisp: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:  # SIGINT or SIGTERM (runs/signals.py): one line, the run is already KILLED
        from posisp_dist.runs.signals import received_signal

        signum = int(getattr(e, "signum", 0) or received_signal() or signal.SIGINT)
        print(f"posisp: {e or 'interrupted'}; a training run in progress is marked KILLED", file=sys.stderr)
        return 128 + signum


if __name__ == "__main__":
    sys.exit(main())
