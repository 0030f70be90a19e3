"""Registry layout and mapping, and the batched executor's semantics and call count."""

from __future__ import annotations

import numpy as np
import pytest

from posisp_dist.isp import DEFAULT_REGISTRY as R
from posisp_dist.isp import ISPExecutor, ModuleSpec, Pipeline, sequence_lengths
from posisp_dist.isp.xp import to_numpy


def test_default_library_matches_paper():
    """The one place the paper's sizes are written out: every other test derives them from the registry."""
    assert R.names == (
        "exposure",
        "gamma",
        "ccm",
        "sharpen",
        "denoise",
        "tone",
        "contrast",
        "saturation",
        "desaturation",
        "white_balance",
    )
    assert R.n_params == 27
    assert [s.n_params for s in R.modules] == [1, 1, 9, 1, 1, 8, 1, 1, 1, 3]


def test_normalised_to_physical_is_linear_and_invertible():
    lo, hi = R.vector("low"), R.vector("high")
    np.testing.assert_allclose(R.to_physical(np.zeros((1, R.n_params))), lo[None], rtol=1e-6)
    np.testing.assert_allclose(R.to_physical(np.ones((1, R.n_params))), hi[None], rtol=1e-6)
    p = np.random.default_rng(0).random((5, R.n_params)).astype(np.float32)
    np.testing.assert_allclose(R.to_normalised(R.to_physical(p)), p, atol=1e-5)


@pytest.mark.parametrize(
    "params, match",
    [
        (np.full((2, R.n_params), np.nan), "NaN"),
        (np.full((2, R.n_params), 1.5), r"\[0, 1\]"),
        (np.zeros((2, R.n_params - 1)), rf"\(B, {R.n_params}\)"),
    ],
)
def test_bad_normalised_params_raise(params, match):
    with pytest.raises(ValueError, match=match):
        R.to_physical(params)


def test_unknown_module_name_raises():
    with pytest.raises(KeyError, match="unknown ISP module 'vignette'.*exposure"):
        R.index("vignette")
    with pytest.raises(KeyError, match="vignette"):
        R.subset(["gamma", "vignette"])


def test_spec_validation_and_registration():
    with pytest.raises(ValueError, match="identity in range"):
        ModuleSpec("bad", lambda i, p, xp: i, ("a",), (0.0,), (1.0,), ("u",), (2.0,), 1.0)
    invert = ModuleSpec("invert", lambda i, p, xp: 1.0 - i, ("unused",), (0.0,), (1.0,), ("-",), (0.0,), 0.5)
    reg = R.with_module(invert)
    assert reg.n_modules == R.n_modules + 1 and reg.n_params == R.n_params + 1 and reg.index("invert") == R.n_modules
    with pytest.raises(ValueError, match="duplicate"):
        reg.with_module(invert)


def _looped(img, tokens, params, reg=R):
    """Reference: every image through its own pipeline, one module call at a time."""
    phys = R.to_physical(params)
    out = []
    for i in range(img.shape[0]):
        x = img[i : i + 1]
        for t in tokens[i]:
            if t == reg.n_modules:
                break
            x = reg.modules[t].fn(x, phys[i : i + 1, reg.param_slice(t)], np)
        out.append(x)
    return np.concatenate(out)


def test_executor_matches_per_image_loop_and_bounds_calls(xp):
    rng = np.random.default_rng(0)
    b, length = 24, 6
    img = rng.random((b, 16, 16, 3), dtype=np.float32)
    tokens = rng.integers(0, R.n_modules + 1, (b, length))  # includes STOP and repeats
    params = rng.random((b, R.n_params)).astype(np.float32)
    ex = ISPExecutor(R, xp, kernels="reference")  # exact grouping check; fused kernels: test_fast_kernels.py
    out = to_numpy(ex.run(xp.asarray(img), tokens, params))
    np.testing.assert_allclose(out, _looped(img, tokens, params), atol=1e-5)
    # one call per distinct (position, module) among images still running: never one per image
    lens = sequence_lengths(tokens, R.n_modules)
    expected = sum(len({tokens[i, p] for i in range(b) if lens[i] > p}) for p in range(length))
    assert ex.stats.module_calls == expected <= length * R.n_modules
    assert ex.stats.module_runs == int(lens.sum())
    assert ex.stats.module_calls < ex.stats.module_runs


def test_executor_stop_and_empty_pipelines():
    img = np.random.default_rng(0).random((3, 8, 8, 3), dtype=np.float32)
    stop = R.n_modules
    tokens = np.array([[stop, 0, 0], [1, stop, 1], [stop, stop, stop]])
    ex = ISPExecutor()
    out = ex.run(img, tokens, np.full((3, R.n_params), 0.7, np.float32))
    np.testing.assert_array_equal(out[0], img[0])  # STOP first: nothing after it runs
    np.testing.assert_array_equal(out[2], img[2])
    assert ex.stats.module_runs == 1


@pytest.mark.parametrize(
    "tokens, match",
    [
        (np.array([[R.n_modules + 1, 0]]), rf"module ids must lie in \[0, {R.n_modules}\]"),
        (np.array([[0.5, 1]]), "integer"),
        (np.zeros((2, 2), int), r"tokens must be shaped \(B=1"),
    ],
)
def test_executor_rejects_bad_tokens(tokens, match):
    with pytest.raises(ValueError, match=match):
        ISPExecutor().run(np.zeros((1, 8, 8, 3), np.float32), tokens, np.zeros((1, R.n_params), np.float32))


def test_decode_encode_round_trip():
    ex = ISPExecutor()
    rng = np.random.default_rng(3)
    tokens = np.array([4, 0, 7, R.n_modules, 2])
    params = rng.random(R.n_params).astype(np.float32)
    pipe = ex.decode(tokens, params)
    assert pipe.modules == ("denoise", "exposure", "saturation")
    assert set(pipe.params[0]) == {"h"}
    t2, p2 = ex.encode(pipe, 5)
    assert ex.decode(t2, p2) == pipe
    assert pipe.cost() == pytest.approx(10.0 + 1.7 + 2.0)
    with pytest.raises(KeyError, match="vignette"):
        ex.encode(Pipeline(("vignette",), ({},)), 3)
