"""Runtime figures of the RL loop: env steps/s of one RLlib EnvRunner (ISP + task model + policy),
the sequence policy's forward latency per image, and peak memory of the ISP path."""

from __future__ import annotations

import resource
import time
import tracemalloc
from typing import Any

import numpy as np
import torch

from posisp_dist.benchmarks.isp import machine_info
from posisp_dist.config import Config

PAPER_POLICY_MS = 1.55  # POS-ISP's predictor, one image on an RTX 2080 Ti (paper, Table of efficiency)


def env_runner_steps_per_s(cfg: Config, kernels: str, timesteps: int = 512, rounds: int = 1) -> dict[str, Any]:
    """One local SingleAgentEnvRunner sampling `timesteps` env steps (one step = one pipeline) in each of
    `rounds` timed rounds after a warm-up sample that loads the data shards and the task model; the rate is
    the median round's."""
    from ray.rllib.env.single_agent_env_runner import SingleAgentEnvRunner

    from posisp_dist.train.algo_config import build_algo_config

    raw = cfg.model_dump(mode="json")
    raw["train"]["num_env_runners"] = 0
    raw["isp"]["kernels"] = kernels
    runner = SingleAgentEnvRunner(config=build_algo_config(Config.model_validate(raw)))
    runner.sample(num_timesteps=cfg.env.num_envs_per_runner, random_actions=False)  # warm-up: data, model, JIT
    rates, steps, dt = [], 0, 0.0
    for _ in range(rounds):
        t = time.perf_counter()
        episodes = runner.sample(num_timesteps=timesteps, random_actions=False)
        took, n = time.perf_counter() - t, sum(len(e) for e in episodes)
        rates, steps, dt = [*rates, n / took], steps + n, dt + took
    runner.stop()
    return {
        "bench": "env_runner",
        "kernels": kernels,
        "env": cfg.env.kind,
        "image_size": cfg.data.image_size,
        "num_envs": cfg.env.num_envs_per_runner,
        "env_steps": steps,
        "seconds": dt,
        "env_steps_per_s": float(np.median(rates)),
    }


def policy_latency(cfg: Config, batches: tuple[int, ...] = (1, 64), reps: int = 50) -> list[dict[str, Any]]:
    """Greedy forward pass of the sequence policy (encoder + autoregressive decoder + parameter head)."""
    import gymnasium as gym

    from envs.sequence_isp import sequence_action_space
    from posisp_dist.isp.catalogue import registry_for
    from posisp_dist.policy.rl_module import SequencePolicyModule

    s = cfg.env.preview_size
    reg = registry_for(cfg.isp.modules)
    obs_space = gym.spaces.Box(0.0, 1.0, (s, s, 3), np.float32)
    module = SequencePolicyModule(
        observation_space=obs_space,
        action_space=sequence_action_space(reg.n_modules, cfg.isp.max_len, reg.n_params),
        model_config=cfg.policy.model_dump(),
    )
    module.eval()
    n_params = sum(p.numel() for p in module.parameters())
    rows = []
    with torch.inference_mode():
        for b in batches:
            obs = {"obs": torch.rand(b, s, s, 3)}
            for _ in range(3):
                module.forward_inference(obs)
            t = time.perf_counter()
            for _ in range(reps):
                module.forward_inference(obs)
            ms = (time.perf_counter() - t) / reps * 1e3
            rows.append(
                {
                    "bench": "policy_latency",
                    "batch": b,
                    "ms_per_batch": ms,
                    "ms_per_image": ms / b,
                    "policy_params": n_params,
                    "paper_ms_per_image_2080ti": PAPER_POLICY_MS,
                    "torch_threads": torch.get_num_threads(),
                }
            )
    return rows


def isp_peak_memory(size: int = 512, batch: int = 32) -> list[dict[str, Any]]:
    """Peak bytes NumPy allocates while the full pipeline runs, per kernel set, against the input size."""
    from posisp_dist.isp.executor import ISPExecutor

    img = np.random.default_rng(0).random((batch, size, size, 3), dtype=np.float32)
    tokens = np.tile(np.arange(10), (batch, 1))
    params = np.full((batch, 27), 0.5, np.float32)
    rows = []
    for kernels in ("fast", "reference"):
        ex = ISPExecutor(kernels=kernels)
        ex.run(img[:1], tokens[:1], params[:1])  # compile outside the traced region
        tracemalloc.start()
        ex.run(img, tokens, params)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        rows.append(
            {
                "bench": "isp_peak_memory",
                "kernels": kernels,
                "size": size,
                "batch": batch,
                "input_mb": img.nbytes / 2**20,
                "peak_mb": peak / 2**20,
                "peak_over_input": peak / img.nbytes,
            }
        )
    return rows


def run(cfg: Config, timesteps: int = 512) -> dict[str, Any]:
    rows = [env_runner_steps_per_s(cfg, k, timesteps) for k in ("fast", "reference")]
    rows += policy_latency(cfg)
    rows += isp_peak_memory()
    maxrss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {**machine_info(), "torch": torch.__version__, "process_max_rss_mb": maxrss_mb, "rows": rows}


def format_rows(result: dict[str, Any]) -> str:
    out = []
    for r in result["rows"]:
        if r["bench"] == "env_runner":
            out.append(
                f"| env steps/s, one EnvRunner ({r['env']}, {r['num_envs']} envs, {r['image_size']}², "
                f"{r['kernels']} kernels) | {r['env_steps_per_s']:.1f} |"
            )
        elif r["bench"] == "policy_latency":
            out.append(
                f"| policy forward, batch {r['batch']} ({r['policy_params']:,} params, "
                f"{r['torch_threads']} threads) | {r['ms_per_image']:.3f} ms/image "
                f"(paper: {r['paper_ms_per_image_2080ti']} ms on a 2080 Ti) |"
            )
        else:
            out.append(
                f"| ISP peak memory, {r['kernels']} kernels, batch {r['batch']} at {r['size']}² "
                f"| {r['peak_mb']:.0f} MiB ({r['peak_over_input']:.1f}× the input) |"
            )
    out.append(f"| process max RSS | {result['process_max_rss_mb']:.0f} MiB |")
    return "\n".join(["| figure | value |", "|---|---|", *out])
