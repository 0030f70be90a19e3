"""The benchmark harness measures what it says: the torch peer does the same work as our modules, and
every benchmark produces its rows (figures themselves live in bench/README.md, not in tests)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from posisp_dist.benchmarks import isp, peer, runtime, torch_peer
from posisp_dist.isp.executor import ISPExecutor
from posisp_dist.isp.registry import DEFAULT_REGISTRY as R

SPECS = list(R.modules)


@pytest.mark.parametrize("spec", SPECS, ids=[s.name for s in SPECS])
def test_torch_peer_computes_the_same_module(spec):
    rng = np.random.default_rng(0)
    img = rng.random((3, 21, 26, 3), dtype=np.float32)
    lo, hi = np.asarray(spec.low, np.float32), np.asarray(spec.high, np.float32)
    p = (lo + (hi - lo) * rng.random((3, spec.n_params))).astype(np.float32)
    got = torch_peer.run_module(spec.name, torch_peer.to_nchw(img), p).numpy().transpose(0, 2, 3, 1)
    np.testing.assert_allclose(got, spec.fn(img, p, np), atol=1e-5)


def test_adaptiveisp_execution_is_the_same_work_in_both_implementations():
    rng = np.random.default_rng(1)
    img = rng.random((2, 16, 16, 3), dtype=np.float32)
    phys = np.asarray(R.to_physical(np.full((2, R.n_params), 0.3, np.float32)), np.float32)
    chosen = [0, 5, 1]
    ours = peer._ours_adaptiveisp(ISPExecutor(R, np, "fast"), img, phys, chosen)
    theirs = torch_peer.run_adaptiveisp(torch_peer.to_nchw(img), [R.names[c] for c in chosen], phys)
    np.testing.assert_allclose(ours, theirs.numpy().transpose(0, 2, 3, 1), atol=1e-4)
    # ... and it is the chosen pipeline: AdaptiveISP's extra modules are discarded work
    once = ISPExecutor(R, np, "fast").run(img, np.array([chosen] * 2), np.full((2, R.n_params), 0.3, np.float32))
    np.testing.assert_allclose(ours, once, atol=1e-5)


def test_peer_bench_rows_and_ratios():
    rows = peer.bench_peer(16, 2, steps=2, min_time=0)
    impls = {(r["workload"], r["impl"]) for r in rows}
    assert ("pipeline", "torch peer") in impls and ("pipeline", "posisp fused (numba)") in impls
    assert ("adaptiveisp_all_modules_K2", "posisp fused (numba)") in impls
    for r in rows:
        assert r["images_per_s"] > 0
        if r["impl"] == "torch peer":
            assert r["speedup_vs_torch_peer"] == pytest.approx(1.0)
    assert "| 16 | 2 | pipeline |" in peer.format_rows({"rows": rows})


def test_isp_bench_has_every_module_for_both_kernel_sets():
    rows = isp.bench_size(np, 16, 2, min_time=0)
    for kind in ("fast", "reference"):
        ops = {r["op"] for r in rows if r.get("kernels") == kind}
        assert ops == set(R.names) | {"full_pipeline"}
    assert all(0 < r["fraction_of_memcpy"] for r in rows if "fraction_of_memcpy" in r)
    assert {r["op"] for r in rows if "kernels" not in r} == {"memcpy", "memcpy_parallel"}
    measured = {(r["kernels"], r["gb_measured"]) for r in rows if "gb_measured" in r}
    assert measured == {("fast", "into a buffer"), ("reference", "allocating its output")}


def test_fused_kernels_allocate_less_than_the_reference():
    fast, ref = runtime.isp_peak_memory(size=32, batch=4)
    assert fast["kernels"] == "fast" and ref["kernels"] == "reference"
    assert 0 < fast["peak_mb"] < ref["peak_mb"]


def test_runtime_bench_samples_an_env_runner_and_times_the_policy(tiny_cfg, tiny_data, tiny_task):
    row = runtime.env_runner_steps_per_s(tiny_cfg, "fast", timesteps=32)
    assert row["env_steps"] >= 32 and row["env_steps_per_s"] > 0
    lat = runtime.policy_latency(tiny_cfg, batches=(1, 4), reps=2)
    assert [r["batch"] for r in lat] == [1, 4] and all(r["ms_per_image"] > 0 for r in lat)
    assert lat[0]["policy_params"] > 1000


@pytest.mark.slow
def test_loop_bench_measures_the_task_model_the_env_runner_and_whole_iterations_on_one_config(
    tiny_cfg, tiny_data, tiny_task
):
    """It starts and stops its own local Ray, as the command does (not the session's `ray_local`, which would
    stay up in this process through the cluster tests that follow)."""
    from posisp_dist.benchmarks import loop
    from posisp_dist.config import Config

    raw = tiny_cfg.model_dump(mode="json")
    raw["env"].update(preview_size=16, num_envs_per_runner=8)
    raw["ppo"].update(train_batch_size=32, minibatch_size=16, num_epochs=1)
    raw["train"].update(num_env_runners=1)
    result = loop.run(Config.model_validate(raw), timesteps=16, iterations=1)
    (row,) = result["rows"]
    assert row["task"] == "builtin_detector" and row["num_env_runners"] == 1 and row["cpus_per_env_runner"] == 1
    for key in ("task_fwd_bwd_images_s", "pathwise_step_images_s", "iteration_images_s", "side_by_side_images_s"):
        assert 0 < row[key] < float("inf"), key
    assert row["pathwise_vs_task"] == pytest.approx(row["pathwise_step_images_s"] / row["task_fwd_bwd_images_s"])
    assert row["iteration_vs_pathwise"] == pytest.approx(row["iteration_images_s"] / row["pathwise_step_images_s"])
    assert row["iteration_images_s"] == pytest.approx(32 / row["iteration_seconds"])
    # (d) factors (c)/(b): what the EnvRunners lose to each other times what the learner and overheads cost
    factors = row["side_by_side_vs_pathwise"] * row["iteration_vs_side_by_side"]
    assert factors == pytest.approx(row["iteration_vs_pathwise"])
    assert row["iteration_vs_side_by_side"] == pytest.approx(row["iteration_images_s"] / row["side_by_side_images_s"])
    assert "(b)/(a)" in loop.format_rows(result) and "(c)/(d)" in loop.format_rows(result)


def test_bench_loop_writes_one_row_per_config_named_by_its_file(tmp_path, monkeypatch):
    from posisp_dist import cli
    from posisp_dist.benchmarks import loop

    seen = []

    def fake_run(cfg, timesteps, iterations):  # the rates themselves are measured in the test above
        seen.append((cfg.task.kind, timesteps, iterations))
        return {"machine": "x", "rows": [{"task": cfg.task.kind, "task_fwd_bwd_images_s": 2.0,
                                          "pathwise_step_images_s": 1.0, "iteration_images_s": 1.5,
                                          "iteration_seconds": 1.0, "pathwise_vs_task": 0.5,
                                          "iteration_vs_pathwise": 0.75, "side_by_side_images_s": 1.8,
                                          "side_by_side_vs_pathwise": 0.9, "iteration_vs_side_by_side": 0.83}]}

    monkeypatch.setattr(loop, "run", fake_run)
    out = tmp_path / "loop.json"
    configs = ["configs/quick.yaml", "configs/quick-yolo.yaml"]
    assert cli.main(["bench", "loop", "--config", *configs, "--iterations", "2", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert [r["config"] for r in result["rows"]] == configs
    assert seen == [("builtin_detector", 128, 2), ("ultralytics", 128, 2)]
    assert result["command"].startswith("posisp ")


def test_loop_bench_runs_torch_on_the_env_runner_share_after_the_isp_kernels_start_numba():
    """(a) and (b) run on one EnvRunner's share. In a process whose Numba pool was sized for the whole machine
    (the bench's own, unlike a Ray worker's), starting that pool at the first ISP call resets the OpenMP thread
    count torch shares: the task model then ran on two threads in (b). In a fresh process, so that the pool
    starts inside the context as it did in the bench."""
    import os
    import subprocess
    import sys

    script = (
        "import os, numpy as np, torch\n"
        "os.environ.pop('OMP_NUM_THREADS', None)\n"
        "from posisp_dist.benchmarks.loop import env_runner_share\n"
        "from posisp_dist.isp import fast_cpu, modules as m\n"
        "with env_runner_share(1):\n"
        "    fast_cpu.KERNELS[m.gamma](np.full((2, 8, 8, 3), 0.5, np.float32), np.full((2, 1), 1.0, np.float32))\n"
        "    print(torch.get_num_threads())\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OMP_", "NUMBA_NUM"))}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[-1] == "1"
