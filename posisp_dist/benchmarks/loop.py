"""The training loop against its floor, on the same images and frozen task model, in one run:

(a) the task model's forward + backward alone (`loss_and_score` and the gradient w.r.t. its input images): the
    unavoidable cost of one pathwise image;
(b) one EnvRunner sampling with the pathwise learner (policy forward, ISP twin forward + backward, task model
    forward + backward, reward, packing), torch on the EnvRunner's own core count;
(c) whole training iterations on Ray (the EnvRunners sampling in parallel, the central learner's update, weight
    sync), after a warm-up iteration;
(d) the same Ray EnvRunners sampling one iteration's batch side by side, nothing else running (each its own
    rollout, as PPO asks for it; only their step counts come back).

(a) and (b) are per EnvRunner; (c) is compared with (b) times the number of EnvRunners, the rate at which they
would sample side by side if they did not slow each other down: (b)/(a) says what the pathwise step adds to the
task model, (c)/(b) what the rest of the iteration costs. (d) splits (c)/(b) in two factors, (d)/(b): what the
EnvRunners lose to each other on a shared machine (memory bandwidth, clocks, Ray's own processes), and (c)/(d):
what the learner, which the EnvRunners wait for, and the iteration's overheads (episodes to the driver, weight
sync) cost.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch

from posisp_dist.benchmarks.isp import machine_info
from posisp_dist.config import Config


def _images(cfg: Config, n: int) -> tuple[Any, list[Any], Any]:
    """`n` input renderings of the train split, their targets, and the frozen task model."""
    from posisp_dist.data.build import build_dataset
    from posisp_dist.data.shards import RawDataset
    from posisp_dist.isp.render import input_raw
    from posisp_dist.tasks import load_task_model
    from posisp_dist.tasks.base import to_torch_nchw

    build_dataset(cfg.data, cfg.seed, progress=False)
    batch = RawDataset(cfg.data.root, "train").load(limit=n)
    task = load_task_model(cfg.task, cfg.data.root, progress=False, device="cpu")
    images = input_raw(batch.raw, batch.black_level, batch.white_level, batch.cfa, np)
    return to_torch_nchw(images, "cpu"), batch.targets, task


def task_fwd_bwd_images_s(cfg: Config, reps: int = 12) -> float:
    """(a): `loss_and_score` + backward to the images, on the EnvRunner's batch (one env step of all its envs)."""
    n = cfg.env.num_envs_per_runner
    x, targets, task = _images(cfg, n)

    def once() -> None:
        xi = x.clone().requires_grad_(True)
        loss, _ = task.loss_and_score(xi, targets)
        loss.sum().backward()

    once()  # warm-up
    t = time.perf_counter()
    for _ in range(reps):
        once()
    return n * reps / (time.perf_counter() - t)


def pathwise_step_images_s(cfg: Config, timesteps: int, rounds: int = 5) -> float:
    """(b): one local EnvRunner (the driver's) sampling `timesteps` pipelines per round after a warm-up round,
    the median of `rounds` (one round of 128 moved by up to +-25 % between runs)."""
    from posisp_dist.benchmarks.runtime import env_runner_steps_per_s

    return float(env_runner_steps_per_s(cfg, cfg.isp.kernels, timesteps, rounds)["env_steps_per_s"])


def side_by_side_images_s(algo: Any, rounds: int) -> float:
    """(d): `rounds` of every remote EnvRunner of `algo` sampling its default rollout at once (RLlib's public
    `EnvRunnerGroup.foreach_env_runner`); the rate over all rounds."""

    def steps(runner: Any) -> int:
        return sum(len(e) for e in runner.sample())

    group, n, t = algo.env_runner_group, 0, time.perf_counter()
    for _ in range(rounds):
        n += sum(group.foreach_env_runner(steps, local_env_runner=group.num_remote_env_runners() == 0))
    return n / (time.perf_counter() - t)


def iteration_images_s(cfg: Config, iterations: int) -> dict[str, float]:
    """(c): `iterations` timed `algo.train()` calls after one warm-up, on a local Ray instance; then (d) on the
    same EnvRunners for as many rounds."""
    import ray

    from posisp_dist.train.algo_config import build_algo_config
    from posisp_dist.train.ray_local import init_ray

    started = init_ray(cfg.train.ray_address)
    algo = build_algo_config(cfg).build_algo()
    try:
        algo.train()  # warm-up: actors, data, task model, JIT
        t = time.perf_counter()
        for _ in range(iterations):  # (RLlib's own timers are smoothed from the warm-up on: not used here)
            algo.train()
        dt = time.perf_counter() - t
        d = side_by_side_images_s(algo, iterations)
    finally:
        algo.stop()
        if started:
            ray.shutdown()
    return {
        "iteration_images_s": cfg.ppo.train_batch_size * iterations / dt,
        "iteration_seconds": dt / iterations,
        "side_by_side_images_s": d,
    }


@contextmanager
def env_runner_share(cpus: int) -> Iterator[None]:
    """This process computes on an EnvRunner's CPU share, as Ray gives it: torch's threads, and the fused ISP
    kernels' Numba threads (read from OMP_NUM_THREADS on every call, `isp.fast_prims._cpu_share`). Numba's
    thread pool is started first: this process sized it for the whole machine when it imported Numba (a Ray
    worker sizes it by its share, `isp.numba_env`), and starting it sets the OpenMP thread count that torch
    shares, which would otherwise undo torch's setting at the first ISP call (the task model then ran on two
    threads in (b), and (b) read up to 1.4x what an EnvRunner gets from its one core)."""
    from posisp_dist.isp.fast_prims import nb  # Numba, imported after its settings (`isp.numba_env`)

    nb.get_num_threads()  # starts the pool (once per process) before torch's thread count is set
    threads, omp = torch.get_num_threads(), os.environ.get("OMP_NUM_THREADS")
    torch.set_num_threads(cpus)
    os.environ["OMP_NUM_THREADS"] = str(cpus)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        if omp is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = omp


def run(cfg: Config, timesteps: int = 128, iterations: int = 5) -> dict[str, Any]:
    """The three rates and their ratios for `cfg`'s task model ((a) and (b) on one EnvRunner's CPU share)."""
    cpus = max(1, int(cfg.train.num_cpus_per_env_runner))
    with env_runner_share(cpus):
        a = task_fwd_bwd_images_s(cfg)
        b = pathwise_step_images_s(cfg, timesteps)
    c = iteration_images_s(cfg, iterations)
    runners = max(1, cfg.train.num_env_runners)
    row = {
        "task": cfg.task.kind,
        "image_size": cfg.data.image_size,
        "num_env_runners": runners,
        "cpus_per_env_runner": cpus,
        "task_fwd_bwd_images_s": a,
        "pathwise_step_images_s": b,
        **c,
        "pathwise_vs_task": b / a,
        "iteration_vs_pathwise": c["iteration_images_s"] / (b * runners),
        "side_by_side_vs_pathwise": c["side_by_side_images_s"] / (b * runners),
        "iteration_vs_side_by_side": c["iteration_images_s"] / c["side_by_side_images_s"],
    }
    return {**machine_info(), "torch": torch.__version__, "rows": [row]}


def format_rows(result: dict[str, Any]) -> str:
    out = ["| task | (a) task fwd+bwd img/s | (b) pathwise EnvRunner img/s | (c) iteration img/s | s/iteration | "
           "(b)/(a) | (c)/(b×runners) | (d) side by side img/s | (d)/(b×runners) | (c)/(d) |",
           "|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        out.append(
            f"| {r['task']} | {r['task_fwd_bwd_images_s']:.1f} | {r['pathwise_step_images_s']:.1f} | "
            f"{r['iteration_images_s']:.1f} | {r['iteration_seconds']:.2f} | {r['pathwise_vs_task']:.2f} | "
            f"{r['iteration_vs_pathwise']:.2f} | {r['side_by_side_images_s']:.1f} | "
            f"{r['side_by_side_vs_pathwise']:.2f} | {r['iteration_vs_side_by_side']:.2f} |"
        )
    return "\n".join(out)
