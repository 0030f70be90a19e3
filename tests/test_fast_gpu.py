"""The CUDA kernels, checked without a GPU: the same C text is compiled with the host's C compiler and run
against every point-wise reference function, compiled as CUDA where nvcc is installed, and launched through
a host stand-in for `cupy.ElementwiseKernel` (raw parameters, explicit size) by the executor's GPU dispatch.
On a GPU machine the real launches run in the parity test (tests/test_isp_modules.py)."""

from __future__ import annotations

import ctypes
import itertools
import shutil
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from posisp_dist.isp import fast_gpu
from posisp_dist.isp import modules as m
from posisp_dist.isp.executor import ISPExecutor
from posisp_dist.isp.kernels import implementation
from posisp_dist.isp.registry import DEFAULT_REGISTRY as R

SPECS = [s for s in R.modules if s.fn in fast_gpu.POINTWISE]
SIGNATURE = "(const float* x, const float* k, long long hw, long long nk, float* y, long long n)"


def _compile(tmp: Path, compiler: list[str], text: str, suffix: str, out: Path) -> None:
    src = tmp / f"kernels{suffix}"
    src.write_text(text)
    done = subprocess.run([*compiler, str(src), "-o", str(out)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-4000:]


@pytest.fixture(scope="module")
def host_kernels(tmp_path_factory):
    """Each body as a C function `run_<body>` looping over the pixels, in one shared library."""
    cc = shutil.which("cc") or shutil.which("gcc")
    assert cc, "a C compiler is needed to check the CUDA bodies (Debian: gcc)"
    tmp = tmp_path_factory.mktemp("cuda_bodies")
    funcs = "".join(
        f"void run_{name}{SIGNATURE} {{\n for (long long i = 0; i < n; ++i) {{ {fast_gpu.source(name)} }}\n}}\n"
        for name in fast_gpu.BODIES
    )
    lib = tmp / "bodies.so"
    _compile(tmp, [cc, "-O2", "-std=c99", "-shared", "-fPIC", "-Wall", "-Werror", "-lm"], fast_gpu.PREAMBLE + funcs,
             ".c", lib)  # fmt: skip
    return ctypes.CDLL(str(lib))


def _run_host(lib: ctypes.CDLL, spec, img: np.ndarray, params: np.ndarray) -> np.ndarray:  # noqa: ANN001
    kernel = fast_gpu.POINTWISE[spec.fn]
    x = np.ascontiguousarray(img, np.float32)
    k = np.ascontiguousarray(kernel.constants(params.astype(np.float32), np), np.float32)
    y = np.full_like(x, np.nan)
    ptr = ctypes.POINTER(ctypes.c_float)
    getattr(lib, f"run_{kernel.body}")(
        x.ctypes.data_as(ptr), k.ctypes.data_as(ptr), ctypes.c_longlong(x.shape[1] * x.shape[2]),
        ctypes.c_longlong(k.shape[1]), y.ctypes.data_as(ptr), ctypes.c_longlong(x.size // 3),
    )  # fmt: skip
    return y


def _images(seed: int) -> np.ndarray:
    img = np.random.default_rng(seed).random((4, 9, 13, 3), dtype=np.float32)
    img[0, :3] = 0.0  # black
    img[1, :3] = 1.0  # white
    img[2] *= np.float32(1e-5)  # tiny values
    img[3, 0, :, 0] = 1.0  # one saturated channel
    return img


@pytest.mark.parametrize("spec", SPECS, ids=[s.name for s in SPECS])
def test_cuda_body_matches_the_reference_on_the_host(host_kernels, spec):
    img = _images(seed=len(spec.name))
    rng = np.random.default_rng(1)
    lo, hi = np.asarray(spec.low, np.float32), np.asarray(spec.high, np.float32)
    params = (lo + (hi - lo) * rng.random((4, spec.n_params))).astype(np.float32)
    params[0], params[-1] = lo, hi  # the range ends
    got = _run_host(host_kernels, spec, img, params)
    np.testing.assert_allclose(got, spec.fn(img, params, np), rtol=0, atol=2e-5, err_msg=spec.name)


def test_every_pointwise_module_has_a_gpu_kernel_and_the_rest_keep_their_reference():
    assert {s.name for s in SPECS} == {
        "exposure", "white_balance", "ccm", "gamma", "tone", "contrast", "saturation", "desaturation"
    }  # fmt: skip
    cupy_like = types.ModuleType("cupy")  # dispatch looks at the namespace's name only; nothing is launched
    for spec in R.modules:
        got = implementation(spec, cupy_like)
        assert (got is fast_gpu.KERNELS[spec.fn]) if spec.fn in fast_gpu.POINTWISE else (got is spec.fn)
        assert implementation(spec, cupy_like, "reference") is spec.fn


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="no nvcc; the host-compiler check covers every body")
def test_cuda_bodies_compile_with_nvcc(tmp_path):
    kernels = "".join(
        f"__global__ void run_{name}{SIGNATURE} {{\n"
        f" const long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x;\n"
        f" if (i < n) {{ {fast_gpu.source(name)} }}\n}}\n"
        for name in fast_gpu.BODIES
    )
    nvcc = [shutil.which("nvcc"), "-c", "-Werror", "all-warnings"]
    _compile(tmp_path, nvcc, fast_gpu.PREAMBLE + kernels, ".cu", tmp_path / "k.o")


def test_tone_body_handles_other_segment_counts(host_kernels):
    spec = next(s for s in SPECS if s.fn is m.tone_curve)
    params = np.random.default_rng(2).uniform(0.5, 2.0, (4, 5)).astype(np.float32)  # 5 segments, not 8
    img = _images(seed=3)
    np.testing.assert_allclose(_run_host(host_kernels, spec, img, params), m.tone_curve(img, params, np), atol=2e-5)


class HostElementwiseKernel:
    """`cupy.ElementwiseKernel` for raw parameters, compiled by the host C compiler: the contract `fast_gpu.run`
    relies on (declared parameters in order, raw arrays as flat contiguous float32, an explicit `size`)."""

    _ids = itertools.count()
    C_TYPES = {"float32": "float", "int64": "long long"}

    def __init__(self, in_params, out_params, operation, name, preamble="", *, tmp: Path):  # noqa: ANN001
        self.params = [p.split() for p in f"{in_params}, {out_params}".split(",")]
        n_in = in_params.count(",") + 1
        raw = "{const}{ctype}* {name}"
        decl = [
            raw.format(const="const " * (j < n_in), ctype=self.C_TYPES[p[1]], name=p[2])
            if p[0] == "raw"
            else f"{self.C_TYPES[p[0]]} {p[1]}"
            for j, p in enumerate(self.params)
        ]
        body = f"void {name}({', '.join(decl)}, long long n) {{ for (long long i = 0; i < n; ++i) {{ {operation} }} }}"
        lib = tmp / f"{name}_{next(self._ids)}.so"
        cc = [shutil.which("cc") or "gcc", "-O2", "-std=c99", "-shared", "-fPIC", "-lm"]
        _compile(tmp, cc, preamble + body, f"_{name}.c", lib)
        self.fn = getattr(ctypes.CDLL(str(lib)), name)

    def __call__(self, *args, size=None):  # noqa: ANN001, ANN204
        assert size is not None, "CuPy needs size= when every parameter is raw"
        assert len(args) == len(self.params), (len(args), self.params)
        c_args = []
        for a, p in zip(args, self.params, strict=True):
            if p[0] == "raw":
                assert isinstance(a, np.ndarray) and a.dtype == np.float32 and a.ndim == 1 and a.flags.c_contiguous, p
                c_args.append(a.ctypes.data_as(ctypes.POINTER(ctypes.c_float)))
            else:
                assert isinstance(a, int), p
                c_args.append(ctypes.c_longlong(a))
        self.fn(*c_args, ctypes.c_longlong(size))


@pytest.fixture
def host_cupy(tmp_path, monkeypatch):
    """NumPy under CuPy's name, with the host ElementwiseKernel: the executor dispatches as on a GPU."""
    fake = types.ModuleType("cupy")
    fake.__dict__.update({k: v for k, v in vars(np).items() if not k.startswith("__")})
    fake.ElementwiseKernel = lambda *a, **kw: HostElementwiseKernel(*a, **kw, tmp=tmp_path)
    monkeypatch.setitem(sys.modules, "cupy", fake)
    fast_gpu._elementwise.cache_clear()
    yield fake
    fast_gpu._elementwise.cache_clear()


def test_gpu_dispatch_runs_every_kernel_through_the_elementwise_contract(host_cupy):
    rng = np.random.default_rng(4)
    img = _images(seed=4)
    tokens = np.stack([rng.permutation(R.n_modules + 1)[:7] for _ in range(4)])  # STOP anywhere
    tokens[0, :3] = [R.names.index(n) for n in ("gamma", "tone", "ccm")]
    params = rng.random((4, R.n_params)).astype(np.float32)
    gpu = ISPExecutor(R, host_cupy, "fast")
    assert sum(fn in fast_gpu.KERNELS.values() for fn in gpu.impls) == len(fast_gpu.POINTWISE)
    ref = ISPExecutor(R, np, "reference")
    np.testing.assert_allclose(gpu.run(img, tokens, params), ref.run(img, tokens, params), atol=3e-4)
    assert gpu.stats == ref.stats
