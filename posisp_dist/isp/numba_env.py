"""Numba's process-wide settings for the fused CPU kernels, made at import, before Numba is first imported
(the fused kernels' files import this module ahead of Numba). A NUMBA_* variable the user set wins, and child processes
inherit the settings through the environment.

- Full-width AVX-512: LLVM's tuning for recent Xeons stops loops at 256-bit vectors (older chips lowered
  their clock for 512-bit code); for these streaming kernels full width is up to 1.45x faster.
- A thread pool the size of this process's CPU share (Ray puts it in OMP_NUM_THREADS). Numba sizes its pool
  when it is imported, and its OpenMP layer sets the process's OpenMP thread count to that size when the
  pool starts. torch shares that OpenMP runtime: with a pool of the machine's core count, the task model in
  a 1-CPU EnvRunner ran on 2 threads after the first ISP call and PPO iterations took 1.8x as long.
"""

from __future__ import annotations

import os
import sys

import llvmlite.binding as llvm


def configure() -> None:
    features = llvm.get_host_cpu_features()
    if features.get("avx512f") and not {"NUMBA_CPU_FEATURES", "NUMBA_CPU_NAME"} & set(os.environ):
        os.environ["NUMBA_CPU_FEATURES"] = features.flatten() + ",-prefer-256-bit"
    if "numba" in sys.modules:  # imported before us: its pool is sized; reread the rest (used at compile time)
        sys.modules["numba"].config.reload_config()
        return
    share = os.environ.get("OMP_NUM_THREADS", "")
    if share.isdigit() and int(share) > 0 and "NUMBA_NUM_THREADS" not in os.environ:
        os.environ["NUMBA_NUM_THREADS"] = str(min(int(share), os.cpu_count() or 1))


configure()
