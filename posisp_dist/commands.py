"""The `posisp` command line as data: every command one row of `COMMANDS` (its words, the name of its handler in
`cli.py`, its help and its options), the options several commands share declared once."""

from __future__ import annotations

import argparse
from typing import Any


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive whole number, got {text}")
    return value


Option = tuple[tuple[str, ...], dict[str, Any]]


def opt(*flags: str, **kwargs: Any) -> Option:
    return flags, kwargs


# the options several commands share, declared once
SPLITS = ("train", "val", "test")
CONFIG = opt("--config", required=True, help="experiment YAML (e.g. configs/quick.yaml)")
QUIET = opt("--quiet", action="store_true", help="no progress output")
SET = opt("--set", action="append", metavar="KEY=VALUE",
          help="override one config field, e.g. --set train.num_env_runners=8 (repeatable; YAML values)")
TRACKING_URI = opt("--tracking-uri", help="MLflow tracking URI (default: the config's tracking.uri, else "
                   "$MLFLOW_TRACKING_URI, else the SQLite store under $POSISP_HOME or the CWD: "
                   ".posisp/mlflow/mlflow.db)")
RUN = opt("--run", required=True, metavar="RUN_ID")
SPLIT = opt("--split", default="test", choices=SPLITS)
MIN_TIME = opt("--min-time", type=float, default=0.5, help="seconds of repetitions per measurement")
SIZES = opt("--sizes", type=int, nargs="+", default=[256, 512])
BATCH = opt("--batch", type=int, default=32)


def json_out(what: str) -> Option:
    return opt("--json", help=f"write {what} to this JSON file")


def bench_config(default: str = "configs/quick.yaml") -> Option:
    return opt("--config", default=default)


GROUPS = {"data": "dataset commands", "cluster": "Ray cluster YAMLs", "task": "task-model commands",
          "bench": "benchmarks"}

# (command words, handler name, help, options): one row per command
COMMANDS: list[tuple[str, str, str, list[Option]]] = [
    ("data build", "cmd_data_build", "generate the built-in low-light raw dataset as Parquet shards", [
        CONFIG, opt("--force", action="store_true", help="rebuild even if a matching dataset exists"), QUIET]),
    ("data ingest", "cmd_data_ingest", "your raw files (DNG, CR2, NEF, ARW, ...) + COCO / VOC boxes -> shards", [
        opt("--raw", required=True, help="folder of raw files (anything LibRaw reads)"),
        opt("--root", required=True, help="data root to write (data.root of a `source: ingested` config)"),
        opt("--coco", action="append", metavar="JSON", help="COCO detection JSON (repeatable)"),
        opt("--voc", action="append", metavar="PATH", help="folder of VOC XML files, or one (repeatable)"),
        opt("--image-size", type=int, default=512, help="letterboxed square side (multiple of 32)"),
        opt("--classes", nargs="+", help="class names in label order (default: all the annotations name)"),
        opt("--split", action="append", metavar="SPLIT=FILE", help="given split: a text file of file names per "
            "line, for each of train, val and test (default: drawn with --seed and --fractions)"),
        opt("--fractions", type=float, nargs=3, default=(0.8, 0.1, 0.1), metavar=("TRAIN", "VAL", "TEST")),
        opt("--seed", type=int, default=0, help="seed of the drawn split"),
        opt("--shard-size", type=int, default=200, help="images per Parquet shard"),
        opt("--reference", help="folder of reference renders (same stem as each raw; default: LibRaw's)"),
        opt("--force", action="store_true", help="replace the dataset already under --root"),
        json_out("the counts and the skip report"), QUIET]),
    ("data verify", "cmd_data_verify", "recheck an ingested root's split files against their SHA-256", [
        opt("--root", required=True), opt("--raw", required=True, help="the folder that was ingested")]),
    ("baselines", "cmd_baselines", "task metric of clean sRGB, input RAW, camera ISP and random search", [
        CONFIG, SPLIT, json_out("the rows"), QUIET]),
    ("train", "cmd_train", "train sequence-level PPO on Ray, tracked in MLflow", [
        opt("--config", help="experiment YAML (e.g. configs/quick.yaml)"),
        opt("--resume", metavar="RUN_ID", help="continue this MLflow run from its last checkpoint"),
        opt("--iterations", type=positive_int, help="override train.iterations (total, including resumed ones)"),
        SET, TRACKING_URI,
        opt("--eval", choices=("val", "test"), help="after training, run `posisp eval` on this split"),
        json_out("the run summary"), QUIET]),
    ("eval", "cmd_eval", "baseline rows plus the learned policy's greedy pipelines on a split", [
        RUN, SPLIT, TRACKING_URI, json_out("the rows and per-image pipelines"),
        opt("--rebuild-data", action="store_true",
            help="regenerate the run's built-in data under data.root when another dataset is there"),
        QUIET]),
    ("apply", "cmd_apply", "process DNG / raw .npz files with a trained policy", [
        RUN, opt("inputs", nargs="+", help="DNG (or any LibRaw raw) or .npz files, or folders of them"),
        opt("-o", "--output", required=True, help="directory for PNGs, pipeline JSON and the contact sheet"),
        TRACKING_URI, QUIET]),
    ("compare", "cmd_compare", "sequence PPO vs image-blind vs step-wise PPO vs search, equal budgets", [
        opt("--config", required=True, help="comparison YAML (e.g. configs/compare.yaml)"),
        opt("--out", default="out/compare", help="directory for compare.md and compare.png"),
        opt("--budget", choices=("wall_clock", "images"), help="override the config's equal budget"),
        opt("--seeds", type=int, nargs="+", help="override the config's seeds"),
        json_out("every row and the aggregate"), QUIET]),
    ("seeds", "cmd_seeds", "train + evaluate one config over seeds (data and task model made per seed)", [
        CONFIG, opt("--seeds", type=int, nargs="+", default=[0, 1, 2]), SET,
        opt("--ppo-params", action="store_true", help="also the same budget with PPO-learned parameters"),
        json_out("per-seed rows and the aggregate"), QUIET]),
    ("cluster check", "cmd_cluster_check", "run Ray's own `ray up` config checks on cluster YAMLs, offline", [
        opt("files", nargs="+", help="e.g. cluster/aws-gpu.yaml")]),
    ("task ship", "cmd_task_ship", "retrain a config's built-in task model from scratch and ship it in the package", [
        bench_config(),
        opt("--check", action="store_true", help="compare with the shipped file instead of writing it")]),
    ("bench isp", "cmd_bench_isp", "ISP module and pipeline throughput (NumPy, and CuPy when present)", [
        SIZES, BATCH, MIN_TIME,
        opt("--kernels", nargs="+", choices=("fast", "reference"), default=["fast", "reference"]),
        json_out("the rows")]),
    ("bench peer", "cmd_bench_peer", "our executor vs the torch peer: pipeline once, and AdaptiveISP's K steps", [
        SIZES, BATCH, opt("--steps", type=int, default=5, help="AdaptiveISP steps K"), MIN_TIME,
        json_out("the rows")]),
    ("bench runtime", "cmd_bench_runtime", "env steps/s of one EnvRunner, policy latency, ISP peak memory", [
        bench_config(), SET, opt("--timesteps", type=int, default=512, help="env steps sampled per measurement"),
        json_out("the rows")]),
    ("bench loop", "cmd_bench_loop", "the training loop against its floor: task fwd+bwd, pathwise EnvRunner, "
     "whole iterations", [
        opt("--config", nargs="+", default=["configs/quick.yaml"], help="one row per config"), SET,
        opt("--timesteps", type=int, default=128, help="pipelines one EnvRunner samples per round for (b)"),
        opt("--iterations", type=int, default=5, help="timed training iterations for (c), after a warm-up"),
        json_out("the rows")]),
    ("bench scaling", "cmd_bench_scaling", "env steps/s against the number of EnvRunners on a 3-node local "
     "Ray cluster", [
        bench_config(), opt("--runners", type=int, nargs="+", default=[1, 2, 4]),
        opt("--iterations", type=int, default=3, help="measured iterations per runner count"),
        opt("--warmup", type=int, default=1, help="first iterations left out (data load, detector load)"),
        opt("--steps-per-runner", type=int, default=128, help="env steps each runner samples per iteration"),
        json_out("the rows")]),
    ("bench signal", "cmd_bench_signal", "per-image signals against val mAP over the uploaded checkpoints of runs", [
        opt("--runs", nargs="+", required=True, metavar="RUN_ID"), TRACKING_URI, json_out("the rows")]),
]
