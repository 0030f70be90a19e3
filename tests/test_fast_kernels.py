"""The fused CPU kernels against their reference functions: every module of the catalogue that has one (the
paper's ten in `fast_cpu.py`, an extension's declared in its `ModuleSpec.kernels`), within its tolerance."""

from __future__ import annotations

import types

import numpy as np
import pytest

from posisp_dist.isp import fast_cpu
from posisp_dist.isp import modules as m
from posisp_dist.isp.catalogue import catalogue
from posisp_dist.isp.executor import ISPExecutor
from posisp_dist.isp.kernels import implementation
from posisp_dist.isp.registry import DEFAULT_REGISTRY as R
from posisp_dist.isp.registry import ModuleSpec, Registry

SPECS = list(R.modules)
IDS = [s.name for s in SPECS]
KERNEL_SPECS = [s for s in catalogue().modules if implementation(s, np) is not s.fn]  # the modules with a kernel
EXTENSION_ATOL = 1e-5  # an extension's kernel against its reference (the paper's ten: fast_cpu.TOLERANCE)


def _hard_images(b: int, h: int, w: int, seed: int) -> np.ndarray:
    """Random images with the cases kernels get wrong: black, white, tiny values, saturated channels."""
    img = np.random.default_rng(seed).random((b, h, w, 3), dtype=np.float32)
    img[0, : h // 3] = 0.0
    img[min(1, b - 1), : h // 4] = 1.0
    img[-1] *= np.float32(1e-5)
    img[0, -1, :, 0] = 1.0  # one saturated channel next to black ones
    return img


def _params(spec: ModuleSpec, b: int, seed: int) -> np.ndarray:
    """Random parameters over the whole range, the first and last rows at the range ends."""
    lo, hi = np.asarray(spec.low, np.float32), np.asarray(spec.high, np.float32)
    p = (lo + (hi - lo) * np.random.default_rng(seed).random((b, spec.n_params))).astype(np.float32)
    p[0] = lo
    p[-1] = hi
    return p


@pytest.mark.parametrize("spec", KERNEL_SPECS, ids=[s.name for s in KERNEL_SPECS])
@pytest.mark.parametrize("shape", [(5, 33, 47), (1, 7, 9), (2, 64, 64)], ids=["odd", "tiny", "square"])
def test_fast_kernel_matches_reference_within_tolerance(spec, shape):
    img = _hard_images(*shape, seed=shape[1])
    p = _params(spec, shape[0], seed=shape[2])
    ref = spec.fn(img, p, np)
    fast = implementation(spec, np)(img, p, np)
    assert fast.shape == img.shape and fast.dtype == np.float32
    assert float(fast.min()) >= 0.0 and float(fast.max()) <= 1.0
    atol = fast_cpu.TOLERANCE.get(spec.name, EXTENSION_ATOL)
    np.testing.assert_allclose(fast, ref, rtol=0, atol=atol, err_msg=spec.name)


def test_every_default_module_has_a_kernel_and_a_tolerance():
    assert set(fast_cpu.KERNELS) == {s.fn for s in SPECS}
    assert set(fast_cpu.TOLERANCE) == set(IDS)


def test_kernels_do_not_modify_their_input():
    img = _hard_images(3, 20, 24, seed=3)
    before = img.copy()
    for spec in KERNEL_SPECS:
        implementation(spec, np)(img, _params(spec, 3, seed=4), np)
    np.testing.assert_array_equal(img, before)


def test_non_contiguous_input_gives_the_same_result():
    img = _hard_images(2, 30, 40, seed=5)
    view = np.ascontiguousarray(np.flip(img, axis=2))[:, :, ::-1]  # a reversed, non-contiguous view of img
    for spec in KERNEL_SPECS:
        p = _params(spec, 2, seed=6)
        np.testing.assert_allclose(implementation(spec, np)(view, p, np), spec.fn(img, p, np), atol=1e-4)


def test_gamma_polynomials_cover_the_exponent_range():
    """x over 20 octaves and gamma at both range ends: the bit-level log2/exp2 stay within tolerance."""
    x = np.geomspace(1e-7, 1.0, 4096, dtype=np.float32).reshape(1, 64, 64, 1).repeat(3, axis=3)
    for g in (1 / 3, 1.0, 3.0):
        p = np.array([[g]], np.float32)
        np.testing.assert_allclose(fast_cpu.gamma(x, p), m.gamma(x, p, np), atol=fast_cpu.TOLERANCE["gamma"])


def test_log2_and_exp2_keep_their_stated_error_bounds():
    x = np.geomspace(np.float32(1e-7), np.float32(1.0), 2001, dtype=np.float32)
    x = np.concatenate([x, np.float32(2.0) ** np.arange(-30, 1, dtype=np.float32) * np.float32(np.sqrt(0.5))])
    got = np.array([fast_cpu._log2(v) for v in x])
    assert np.abs(got - np.log2(x.astype(np.float64))).max() < 3e-6  # mantissa ends around sqrt(1/2) included
    y = np.concatenate([np.linspace(-126.0, 0.0, 4001, dtype=np.float32), np.float32([-3.0, -1e-9])])
    got = np.array([fast_cpu._exp2(v) for v in y])
    assert np.abs(got / np.exp2(y.astype(np.float64)) - 1).max() < 6e-7


def test_pointwise_modules_write_into_a_given_buffer():
    img = _hard_images(3, 16, 20, seed=10)
    for fn, spec in [(fast_cpu.KERNELS[s.fn], s) for s in SPECS if s.name not in ("sharpen", "denoise")]:
        p = _params(spec, 3, seed=11)
        out = np.full(img.shape, -1.0, np.float32)
        assert fast_cpu.__dict__[fn.__name__](img, p, out=out) is out
        np.testing.assert_array_equal(out, fn(img, p, np), err_msg=spec.name)
    with pytest.raises(ValueError, match="C-contiguous float32"):
        fast_cpu.gamma(img, np.ones((3, 1), np.float32), out=np.empty((3, 16, 20, 3), np.float64))


def test_tone_curve_with_other_than_eight_segments_falls_back_to_the_reference():
    img = _hard_images(2, 8, 8, seed=12)
    p = np.random.default_rng(12).uniform(0.5, 2.0, (2, 5)).astype(np.float32)
    out = np.empty_like(img)
    assert fast_cpu.tone_curve(img, p, out=out) is out
    np.testing.assert_allclose(out, m.tone_curve(img, p, np), atol=1e-6)


def test_denoise_strong_filtering_flattens_noise_like_the_reference():
    rng = np.random.default_rng(7)
    img = np.clip(0.5 + 0.1 * rng.standard_normal((1, 40, 40, 3)), 0, 1).astype(np.float32)
    p = np.array([[1.0]], np.float32)
    fast = fast_cpu.denoise(img, p)
    assert fast.std() < 0.5 * img.std()
    np.testing.assert_allclose(fast, m.denoise(img, p, np), atol=fast_cpu.TOLERANCE["denoise"])


def test_denoise_at_several_strengths_in_one_pass_equals_each_strength_bit_for_bit():
    """The NLM twin takes its value and its central difference in h from one kernel pass: each strength's
    output must be exactly what `denoise` gives at that strength alone."""
    img = _hard_images(3, 20, 36, seed=13)
    h = np.random.default_rng(13).uniform(1e-4, 0.3, (3, 1)).astype(np.float32)
    strengths = np.concatenate([h, h + 0.01, np.maximum(h - 0.01, 1e-5)], axis=1)
    planes = fast_cpu.denoise_strengths(img, strengths)
    assert planes.shape == (3, 3, 3, 20, 36)
    for k in range(3):
        alone = fast_cpu.denoise(img, strengths[:, k : k + 1])
        np.testing.assert_array_equal(planes[k].transpose(0, 2, 3, 1), alone)
    assert not np.array_equal(planes[1], planes[2])  # the strengths do differ


def test_executor_fast_and_reference_agree_on_mixed_pipelines():
    reg = catalogue()  # the paper's ten and the extensions, kernels or not
    rng = np.random.default_rng(8)
    img = _hard_images(8, 24, 28, seed=8)
    tokens = np.stack([rng.permutation(reg.n_modules + 1)[:6] for _ in range(8)])  # STOP anywhere
    params = rng.random((8, reg.n_params)).astype(np.float32)
    fast = ISPExecutor(reg, np, "fast")
    ref = ISPExecutor(reg, np, "reference")
    np.testing.assert_allclose(fast.run(img, tokens, params), ref.run(img, tokens, params), atol=3e-4)
    assert fast.stats == ref.stats  # the same grouping: the kernels change speed, not the work counted


def test_dispatch_is_by_function_identity_so_custom_modules_keep_their_code():
    def my_gamma(img, params, xp):
        return xp.clip(img * 0.5, 0.0, 1.0)

    custom = ModuleSpec("gamma", my_gamma, ("gamma",), (0.1,), (3.0,), ("exponent",), (1.0,), 1.0)
    reg = Registry((custom,))
    paper_gamma = R.modules[R.index("gamma")]
    assert implementation(custom, np) is my_gamma
    assert implementation(paper_gamma, np) is fast_cpu.KERNELS[m.gamma]
    assert implementation(paper_gamma, np, "reference") is m.gamma
    img = np.full((1, 4, 4, 3), 0.8, np.float32)
    out = ISPExecutor(reg, np).run(img, np.array([[0]]), np.array([[0.5]], np.float32))
    np.testing.assert_allclose(out, 0.4)
    with pytest.raises(ValueError, match="kernels must be one of"):
        implementation(paper_gamma, np, "turbo")


def test_a_kernel_declared_by_a_module_runs_for_its_namespace_only():
    """An extension module brings its kernel in its spec (`kernels={"numpy": ...}`): it runs for `fast` on NumPy,
    the reference for `reference` and on namespaces it declares nothing for."""

    def halve(img, params, xp):
        return xp.clip(img * 0.5, 0.0, 1.0)

    def halve_fused(img, params, xp):
        return (img * np.float32(0.5)).astype(np.float32)

    spec = ModuleSpec("halve", halve, ("k",), (0.0,), (1.0,), ("-",), (0.0,), 1.0, kernels={"numpy": halve_fused})
    assert implementation(spec, np) is halve_fused
    assert implementation(spec, np, "reference") is halve
    assert implementation(spec, types.ModuleType("cupy"), "fast") is halve  # nothing launched: dispatch only
    img = np.full((1, 4, 4, 3), 0.8, np.float32)
    out = ISPExecutor(Registry((spec,)), np).run(img, np.array([[0]]), np.zeros((1, 1), np.float32))
    np.testing.assert_array_equal(out, halve_fused(img, None, np))


def test_kernels_keep_to_the_cpu_share_ray_gives_a_worker(monkeypatch):
    import numba

    before = numba.get_num_threads()
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    try:
        fast_cpu.KERNELS[m.exposure](_hard_images(2, 8, 8, seed=9), np.zeros((2, 1), np.float32), np)
        assert numba.get_num_threads() == 1
    finally:
        numba.set_num_threads(before)


NUMBA_PROBE = """
import json, numpy as np, torch  # torch first, as in an EnvRunner
from posisp_dist.benchmarks import isp  # the bench compiles its copy before any module: the order users hit
isp.bench_size(np, 8, 1, min_time=0, kernels=("fast",))
from numba.core.registry import cpu_target
print(json.dumps({"full_width": "-prefer-256-bit" in cpu_target.target_context.codegen()._tm_features,
                  "torch_threads": torch.get_num_threads()}))
"""


def _probe(env: dict[str, str]) -> dict:
    import json
    import os
    import subprocess
    import sys

    env = {**{k: v for k, v in os.environ.items() if not k.startswith(("NUMBA_", "OMP_"))}, **env}
    out = subprocess.run([sys.executable, "-c", NUMBA_PROBE], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_kernels_compile_for_full_width_avx512_unless_the_user_chose_cpu_features():
    import llvmlite.binding as llvm

    host = llvm.get_host_cpu_features()
    assert _probe({})["full_width"] == bool(host.get("avx512f"))  # on this project's machines: True
    assert _probe({"NUMBA_CPU_FEATURES": host.flatten()})["full_width"] is False


@pytest.mark.slow
def test_kernels_leave_torch_on_the_cpu_share_of_a_one_cpu_worker():
    """Numba's OpenMP pool used to raise the process's OpenMP threads (shared with torch) to the core count."""
    assert _probe({"OMP_NUM_THREADS": "1"})["torch_threads"] == 1
