"""The differentiable torch twins of every module of the catalogue against their references: values over the
range corners, gradients by finite differences per parameter, and finiteness at the range ends."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from posisp_dist.isp import torch_twin as tw
from posisp_dist.isp.catalogue import catalogue
from posisp_dist.isp.executor import ISPExecutor
from posisp_dist.isp.registry import DEFAULT_REGISTRY as R
from posisp_dist.isp.registry import ModuleSpec

SPECS = list(catalogue().modules)
IDS = [s.name for s in SPECS]
VALUE_ATOL = 2e-5  # float32 twin vs float32 reference; the denoise sums over 121 offsets in another order


def _img(b=3, h=20, w=18, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).random((b, h, w, 3), dtype=np.float32)


def _nchw(img: np.ndarray, dtype=torch.float32) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(img.transpose(0, 3, 1, 2))).to(dtype)


def _corner_params(spec: ModuleSpec, b: int, corner: str, seed: int = 1) -> np.ndarray:
    lo, hi = np.asarray(spec.low, np.float32), np.asarray(spec.high, np.float32)
    if corner == "random":
        return (lo + (hi - lo) * np.random.default_rng(seed).random((b, spec.n_params))).astype(np.float32)
    return np.tile(np.asarray(getattr(spec, corner), np.float32), (b, 1))


@pytest.mark.parametrize("corner", ["low", "high", "identity", "random"])
@pytest.mark.parametrize("spec", SPECS, ids=IDS)
def test_twin_matches_reference(spec, corner):
    img, p = _img(), _corner_params(spec, 3, corner)
    want = spec(img, p, np)
    got = tw.twin_of(spec)(_nchw(img), torch.from_numpy(p)).numpy().transpose(0, 2, 3, 1)
    np.testing.assert_allclose(got, want, atol=VALUE_ATOL)


def _smooth_img(b=2, h=12, w=10) -> np.ndarray:
    """Mid-tone image without exact zeros, ones or ties: the references are differentiable there."""
    rng = np.random.default_rng(3)
    return (0.15 + 0.6 * rng.random((b, h, w, 3))).astype(np.float64)


# interior parameter values (normalised) at which each module's output is away from its clamps
INTERIOR = {"exposure": 0.45, "gamma": 0.3, "sharpen": 0.08, "denoise": 0.3}


@pytest.mark.parametrize("spec", SPECS, ids=IDS)
def test_twin_gradient_matches_finite_differences(spec):
    """d(weighted output sum)/d(param) of the twin against central differences of the twin, per parameter."""
    x = _nchw(_smooth_img(), torch.float64)
    rng = np.random.default_rng(5)
    norm = np.full((2, spec.n_params), INTERIOR.get(spec.name, 0.0))
    if spec.name not in INTERIOR:  # start at identity and move a little, so every param matters
        ident = (np.asarray(spec.identity) - np.asarray(spec.low)) / (np.asarray(spec.high) - np.asarray(spec.low))
        norm = ident + 0.08 * (rng.random((2, spec.n_params)) - 0.5)
    lo, hi = torch.tensor(spec.low, dtype=torch.float64), torch.tensor(spec.high, dtype=torch.float64)
    weights = torch.from_numpy(rng.random(tuple(x.shape)))
    fn = tw.twin_of(spec)

    def f(n: torch.Tensor) -> torch.Tensor:
        return (fn(x, lo + (hi - lo) * n) * weights).sum()

    n = torch.tensor(norm, dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(f(n), n)
    eps = 1e-6
    for i in range(2):
        for j in range(spec.n_params):
            d = torch.zeros_like(n)
            d[i, j] = eps
            fd = (f(n.detach() + d) - f(n.detach() - d)) / (2 * eps)
            assert float(grad[i, j]) == pytest.approx(float(fd), rel=1e-4, abs=1e-6), (spec.param_names[j], i)
    assert float(grad.abs().sum()) > 0  # every module's params move its output somewhere


@pytest.mark.parametrize("corner", ["low", "high"])
@pytest.mark.parametrize("spec", SPECS, ids=IDS)
def test_twin_gradients_finite_at_range_ends(spec, corner):
    x = _nchw(_img(b=2, seed=4)).requires_grad_(True)
    p = torch.from_numpy(_corner_params(spec, 2, corner)).requires_grad_(True)
    tw.twin_of(spec)(x, p).sum().backward()
    assert torch.isfinite(p.grad).all() and torch.isfinite(x.grad).all()


def test_run_pipelines_equals_the_executor_and_reaches_every_used_param():
    """Mixed pipelines in one batch over the whole catalogue (the extension modules in a row of their own): the
    twin's output equals the executor's (reference kernels), and the gradient reaches exactly the params of the
    modules each row runs."""
    reg = catalogue()
    rng = np.random.default_rng(0)
    b, stop = 5, reg.n_modules
    index = [reg.index(n) for n in ("exposure", "ccm", "gamma", "denoise", "tone", "contrast", "saturation")]
    extras = list(range(R.n_modules, reg.n_modules))[:4]
    tokens = np.array([[*index[:3], stop], [index[3], index[0], stop, stop], [*index[4:], reg.index("white_balance")],
                       [stop] * 4, extras + [stop] * (4 - len(extras))])  # fmt: skip
    # near identity, off the range ends (at an end, to_physical's clamp has a zero gradient)
    norm = np.clip(reg.identity_normalised() + 0.1 * (rng.random((b, reg.n_params)) - 0.5), 0.01, 0.99)
    norm = norm.astype(np.float32)
    norm[:, reg.param_slice(reg.index("denoise"))] = 0.3  # h at its identity (1e-5) has a zero gradient
    img = _img(b=b, h=16, w=16)
    want = ISPExecutor(reg, np, "reference").run(img, tokens, norm)
    p = torch.from_numpy(norm).requires_grad_(True)
    got = tw.run_pipelines(_nchw(img), tokens, p, reg)
    np.testing.assert_allclose(got.detach().numpy().transpose(0, 2, 3, 1), want, atol=VALUE_ATOL)
    got.sum().backward()
    assert torch.isfinite(p.grad).all()
    for row in range(b):
        used = {int(t) for t in tokens[row] if t != stop}
        for i in range(reg.n_modules):
            reached = bool(p.grad[row, reg.param_slice(i)].abs().sum() > 0)
            assert reached == (i in used), (row, reg.names[i])


def test_module_without_twin_is_named():
    spec = ModuleSpec("my_module", lambda img, p, xp: img, ("k",), (0.0,), (1.0,), ("unit",), (0.0,), 1.0)
    with pytest.raises(KeyError, match="my_module.*no differentiable torch twin"):
        tw.twin_of(spec)


def test_brightness_penalty_matches_the_env():
    from envs.core import brightness_penalty

    imgs = np.stack([np.full((8, 8, 3), v, np.float32) for v in (0.002, 0.5, 0.95)])
    np.testing.assert_allclose(tw.brightness_penalty(_nchw(imgs)).numpy(), brightness_penalty(imgs, np), rtol=1e-5)


def test_fast_denoise_backward_keeps_the_value_and_the_h_gradient():
    """`backward="fast"`: the same output as the exact graph; d/dh within 2 % of the exact twin's gradient;
    the image gradient passed straight through (a global exposure upstream gets the same sign and, because
    the NLM's rows sum to 1, nearly the same size)."""
    img = _nchw(np.clip(_img(b=2, h=24, w=24, seed=7) * 0.5 + 0.2, 0, 1))
    tokens = np.array([[0, 4, R.n_modules]] * 2)
    norm = torch.from_numpy(R.identity_normalised()[None].repeat(2, 0).copy())
    norm[:, R.param_slice(0)] = 0.55  # a little exposure, so upstream gradients are not clamped away
    norm[:, R.param_slice(4)] = 0.25
    grads, outs = {}, {}
    weights = torch.from_numpy(np.random.default_rng(1).random((2, 3, 24, 24)).astype(np.float32))
    for mode in ("exact", "fast"):
        p = norm.clone().requires_grad_(True)
        out = tw.run_pipelines(img, tokens, p, R, backward=mode)
        (out * weights).sum().backward()
        grads[mode], outs[mode] = p.grad, out.detach()
    torch.testing.assert_close(outs["fast"], outs["exact"], atol=VALUE_ATOL, rtol=0)
    h = R.param_slice(4).start
    torch.testing.assert_close(grads["fast"][:, h], grads["exact"][:, h], rtol=0.02, atol=1e-4)
    ev = R.param_slice(0).start
    assert (torch.sign(grads["fast"][:, ev]) == torch.sign(grads["exact"][:, ev])).all()
    torch.testing.assert_close(grads["fast"][:, ev], grads["exact"][:, ev], rtol=0.25, atol=1e-3)
    with pytest.raises(ValueError, match="backward must be exact or fast"):
        tw.run_pipelines(img, tokens, norm, R, backward="approximate")
