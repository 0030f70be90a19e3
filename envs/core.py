"""What the ISP environments share: the images of this worker's shards, their previews and reference
scores, the batched ISP executor and the frozen task model. One `evaluate` call scores N pipelines with
one executor call and one task-model batch."""

from __future__ import annotations

import time
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Protocol

import numpy as np

from posisp_dist.cache.score_cache import ScoreCache
from posisp_dist.data.shards import RawBatch
from posisp_dist.isp.executor import ISPExecutor, sequence_lengths
from posisp_dist.isp.registry import Registry
from posisp_dist.isp.render import input_raw
from posisp_dist.isp.xp import to_numpy
from posisp_dist.tasks.base import TaskModel


def area_downsample(img: np.ndarray, size: int) -> np.ndarray:
    """(N, H, W, 3) -> (N, size, size, 3) by block averaging (H and W multiples of size) or striding."""
    n, h, w, c = img.shape
    if h % size == 0 and w % size == 0:
        return img.reshape(n, size, h // size, size, w // size, c).mean(axis=(2, 4))
    ys, xs = (np.arange(size) * h) // size, (np.arange(size) * w) // size
    return img[:, ys][:, :, xs]


def brightness_penalty(img: Any, xp: ModuleType) -> np.ndarray:
    """The paper's range penalty on mean brightness: steep below 0.01, gentle above 0.9."""
    mean = to_numpy(img.reshape(img.shape[0], -1).mean(axis=1)).astype(np.float64)
    return np.where(mean < 0.01, (0.01 - mean) * 1000.0, 0.0) + np.where(mean > 0.9, (mean - 0.9) * 10.0, 0.0)


def isp_reward(
    score: np.ndarray, prev_score: np.ndarray, penalty: np.ndarray, prev_penalty: np.ndarray, cost: np.ndarray,
    cost_lambda: float,
) -> np.ndarray:
    """The reward of both envs: task-score gain over the image before, minus the brightness-penalty change,
    minus the modules' cost. The sequence env measures against the input-RAW rendering once per pipeline;
    the step-wise env against the previous step's image, so its step rewards add up to the same figure."""
    return (score - prev_score) - (penalty - prev_penalty) - cost_lambda * cost


@dataclass
class StepResult:
    reward: np.ndarray  # (N,)
    task_score: np.ndarray  # (N,)
    ref_score: np.ndarray  # (N,)
    cost: np.ndarray  # (N,)
    length: np.ndarray  # (N,)
    tokens: np.ndarray  # (N, L)
    params: np.ndarray  # (N, P) normalised
    output: Any = None  # (N, H, W, 3) ISP outputs (`evaluate` keeps them only when asked for)
    param_grad: np.ndarray | None = None  # (N, P) d(task loss + brightness penalty)/d(normalised params)
    pathwise_loss: np.ndarray | None = None  # (N,) that loss, from the torch twin
    penalty: Any = None  # (N,) brightness penalty of the outputs (0 when the penalty is off)


class ISPTaskCore:
    """Images + executor + task model. Rewards are relative to the input-RAW rendering of each image."""

    def __init__(
        self,
        batch: RawBatch,
        task: TaskModel,
        registry: Registry,
        xp: ModuleType = np,
        preview_size: int = 64,
        cost_lambda: float = 0.0,
        brightness: bool = True,
        score_cache: ScoreCache | None = None,
        cache_namespace: str | None = None,
        kernels: str = "fast",
        pathwise_backward: str = "exact",
        pathwise_fraction: float = 1.0,
        seed: int | list[int] = 0,
    ) -> None:
        if len(batch) == 0:
            raise ValueError("the environment needs at least one image")
        self.batch, self.task, self.registry, self.xp = batch, task, registry, xp
        self.preview_size = preview_size
        self.executor = ISPExecutor(registry, xp, kernels)
        self.cost_lambda, self.use_brightness = cost_lambda, brightness
        self.pathwise_backward = pathwise_backward  # torch_twin.run_pipelines(backward=...)
        if not 0.0 < pathwise_fraction <= 1.0:
            raise ValueError(f"pathwise_fraction must lie in (0, 1], got {pathwise_fraction}")
        self.pathwise_fraction = pathwise_fraction
        self.rng = np.random.default_rng(seed)  # which rows of a pathwise step get the gradient (fraction < 1)
        self.images = input_raw(xp.asarray(batch.raw), batch.black_level, batch.white_level, batch.cfa, xp)
        self.previews = area_downsample(to_numpy(self.images), preview_size).astype(np.float32)
        self.targets = batch.targets
        self.ref_task_images = 0  # images the task model scored for reference scores (0 on a full cache hit)
        self.ref_score = self._reference_scores(score_cache, cache_namespace)
        self.ref_penalty = brightness_penalty(self.images, xp)
        self.task_calls = 0  # task-model batches
        self.task_images = 0  # images scored by the task model
        self.task_backward_images = 0  # images whose task loss was backpropagated (pathwise learner)
        self.pathwise_seconds = 0.0  # time spent in the torch twin and its backward pass

    def __len__(self) -> int:
        return len(self.batch)

    def _reference_scores(self, cache: ScoreCache | None, namespace: str | None) -> np.ndarray:
        """Task score of each input-RAW image: from the shared cache where held, computed (and shared) otherwise."""
        ids = [int(i) for i in self.batch.ids]
        found = cache.get_many(namespace, ids) if cache is not None and namespace else {}
        todo = np.array([k for k, i in enumerate(ids) if i not in found], np.int64)
        if len(todo):
            images = self.images if len(todo) == len(ids) else self.images[self.xp.asarray(todo)]  # no copy if all
            scores = np.asarray(self.task.score(images, [self.targets[k] for k in todo]), np.float64)
            self.ref_task_images += len(todo)
            computed = {ids[k]: float(v) for k, v in zip(todo, scores, strict=True)}
            if cache is not None and namespace:
                cache.put_many(namespace, computed)
            found = {**found, **computed}
        return np.array([found[i] for i in ids], np.float64)

    def get(self) -> ISPTaskCore:
        """The core itself (environments accept this or a lazy `envs.factory.CoreSource`)."""
        return self

    def bind_worker(self, worker_index: int | None, num_workers: int | None) -> None:
        """A ready core already holds its images; nothing to bind."""

    def check_action(self, tokens: Any, params: Any, n: int, max_len: int) -> tuple[np.ndarray, np.ndarray]:
        """Validate a batch of actions; raise ValueError naming what is wrong."""
        t = np.asarray(tokens)
        p = np.asarray(params, dtype=np.float64)
        if t.shape != (n, max_len):
            raise ValueError(f"action 'modules' must be shaped ({max_len},) per env, got {t.shape[1:] or t.shape}")
        if p.shape != (n, self.registry.n_params):
            raise ValueError(f"action 'params' must be shaped ({self.registry.n_params},) per env, got {p.shape[1:]}")
        if not np.isfinite(p).all():
            raise ValueError("action 'params' contains NaN or inf")
        if p.min() < 0.0 or p.max() > 1.0:
            raise ValueError(f"action 'params' must lie in [0, 1] (normalised); got [{p.min():.3g}, {p.max():.3g}]")
        if not np.issubdtype(t.dtype, np.integer) and not np.all(t == np.round(t)):
            raise ValueError("action 'modules' must hold integer module ids")
        t = t.astype(np.int64)
        if t.min() < 0 or t.max() > self.registry.n_modules:
            raise ValueError(f"action 'modules' ids must lie in [0, {self.registry.n_modules}] (STOP = last)")
        return t, p.astype(np.float32)

    def evaluate(
        self,
        idx: np.ndarray,
        tokens: Any,
        params: Any,
        max_len: int | None = None,
        keep_output: bool = False,
        param_grad: bool = False,
    ) -> StepResult:
        """Whole pipelines on the input renderings of images `idx` (the sequence env's step): `step` from the
        reference score and penalty, after checking the actions; a STOP-only pipeline is the input itself, reward
        exactly 0."""
        idx = np.asarray(idx)
        t, p = self.check_action(tokens, params, len(idx), max_len or np.asarray(tokens).shape[-1])
        ref_pen = self.ref_penalty[idx] if self.use_brightness else np.zeros(len(idx))
        r = self.step(self.images[self.xp.asarray(idx)], idx, t, p, self.ref_score[idx], ref_pen, param_grad=param_grad)
        r.reward = np.where(r.length == 0, 0.0, r.reward)
        r.output = r.output if keep_output else None
        return r

    def step(
        self, images: Any, idx: np.ndarray, tokens: np.ndarray, params: np.ndarray, prev_score: np.ndarray,
        prev_penalty: np.ndarray, param_grad: bool = False, outputs: Any = None,
    ) -> StepResult:
        """The one env step of both envs: N checked pipelines (`tokens` (N, L), `params` (N, P)) on `images`
        (renderings of the core's images `idx`) in one executor call, scored in one task batch, rewarded for the
        change from `prev_score` and `prev_penalty`. With `param_grad` (the pathwise learner) the pipelines run
        once through the differentiable torch twin instead, and the same task-model forward pass gives the score
        and, backpropagated, each image's gradient w.r.t. its normalised params. `outputs`: the pipelines'
        outputs when the caller ran them already (AdaptiveISP's every-module step)."""
        grad = loss = None
        if param_grad:
            out, score, grad, loss = self.pathwise_sampled(images, tokens, params, idx)
        else:
            out = outputs if outputs is not None else self.executor.run(images, tokens, params)
            score = np.asarray(self.task.score(out, [self.targets[i] for i in idx]), np.float64)
        self.task_calls += 1
        self.task_images += len(idx)
        length = sequence_lengths(tokens, self.registry.n_modules)
        costs = np.concatenate([self.registry.costs, [0.0]])
        running = np.arange(tokens.shape[1])[None, :] < length[:, None]  # positions before each row's STOP
        cost = np.where(running, costs[tokens], 0.0).sum(axis=1)
        pen = brightness_penalty(out, self.xp) if self.use_brightness else np.zeros(len(idx))
        reward = isp_reward(score, prev_score, pen, prev_penalty, cost, self.cost_lambda)
        return StepResult(reward, score, self.ref_score[idx], cost, length, tokens, params, out, grad, loss, pen)

    def pathwise_sampled(
        self, images: Any, tokens: np.ndarray, params: np.ndarray, idx: np.ndarray
    ) -> tuple[Any, ...]:
        """`pathwise` on all N rows, or (`pathwise_fraction` f < 1) on a random m = max(1, round(f N)) of them:
        the other rows run the fast kernels and a forward-only task pass (the same outputs and scores, no backward),
        their gradient is 0 and their loss NaN, and the m gradients are scaled by N / m, so the learner's mean over
        the batch stays an unbiased estimate of the full batch's mean gradient, at m task-model backward passes
        instead of N."""
        n = len(idx)
        m = max(1, round(self.pathwise_fraction * n))
        if m >= n:
            return self.pathwise(images, tokens, params, idx)
        rows = np.sort(self.rng.choice(n, m, replace=False))
        rest = np.setdiff1d(np.arange(n), rows)
        xp = self.xp
        out_g, score_g, grad_g, loss_g = self.pathwise(images[xp.asarray(rows)], tokens[rows], params[rows], idx[rows])
        out_r = self.executor.run(images[xp.asarray(rest)], tokens[rest], params[rest])
        score_r = np.asarray(self.task.score(out_r, [self.targets[i] for i in idx[rest]]), np.float64)
        self.task_calls += 1  # the forward-only batch (`step` counts the pathwise one)
        out = xp.empty((n, *out_g.shape[1:]), dtype=out_g.dtype)
        out[xp.asarray(rows)], out[xp.asarray(rest)] = out_g, out_r
        score, grad, loss = np.empty(n), np.zeros((n, grad_g.shape[1]), np.float32), np.full(n, np.nan)
        score[rows], score[rest] = score_g, score_r
        grad[rows], loss[rows] = grad_g * np.float32(n / m), loss_g
        return out, score, grad, loss

    def pathwise(self, images: Any, tokens: np.ndarray, params: np.ndarray, idx: np.ndarray) -> tuple[Any, ...]:
        """`images` (N, H, W, 3, an `xp` batch; renderings of the core's images `idx`) through the pipelines of
        the torch twin into the task model's loss (+ the brightness penalty when it is on), one forward and one
        backward pass -> (outputs as an `xp` batch, (N,) score, (N, P) gradient w.r.t. the normalised params,
        (N,) loss). Each image's loss depends only on its own params, so the gradient of the summed loss gives
        every row's own gradient.
        The sequence env passes whole pipelines on the input images, the step-wise env one module on the
        current image of each episode."""
        import torch

        from posisp_dist.isp.torch_twin import brightness_penalty as penalty
        from posisp_dist.isp.torch_twin import run_pipelines
        from posisp_dist.tasks.base import require_differentiable, to_torch_nchw

        require_differentiable(self.task)
        t0 = time.perf_counter()
        device = getattr(self.task, "device", "cpu")
        targets = [self.targets[i] for i in idx]
        x = to_torch_nchw(images, device)
        p = torch.as_tensor(params, dtype=torch.float32, device=device).requires_grad_(True)
        with torch.enable_grad():
            out = run_pipelines(x, tokens, p, self.registry, self.pathwise_backward, self.executor.stats)
            loss, score = self.task.loss_and_score(out, targets)
            if self.use_brightness:
                loss = loss + penalty(out)
            # a batch of STOP-only pipelines leaves the loss without a path to the params: their gradient is 0
            (grad,) = torch.autograd.grad(loss.sum(), p) if loss.requires_grad else (torch.zeros_like(p),)
        if not bool(torch.isfinite(grad).all()):
            raise FloatingPointError(
                f"non-finite pathwise gradient for images {[int(self.batch.ids[i]) for i in idx]} "
                f"(pipelines {tokens.tolist()}): the torch twin or the task loss overflowed"
            )
        self.pathwise_seconds += time.perf_counter() - t0
        self.task_backward_images += len(idx)
        nhwc = out.detach().permute(0, 2, 3, 1).contiguous()
        images = nhwc.cpu().numpy() if self.xp is np else self.xp.from_dlpack(nhwc)
        as_np = lambda v: v.detach().cpu().numpy().astype(np.float64)  # noqa: E731
        return images, np.asarray(score, np.float64), grad.cpu().numpy().astype(np.float32), as_np(loss)


class DataSource(Protocol):
    """What the envs need from where their data comes from: this worker's core, made on first `get()` (an
    `ISPTaskCore` is its own source; `envs.factory.CoreSource` loads the worker's shards lazily), and the
    worker index to pick the shards by, bound before the first reset."""

    def get(self) -> ISPTaskCore: ...

    def bind_worker(self, worker_index: int | None, num_workers: int | None) -> None: ...


class CoreBound:
    """What every ISP env shares: `source` is a `DataSource`; RLlib binds the worker index before the first
    reset."""

    source: DataSource

    @property
    def core(self) -> ISPTaskCore:
        return self.source.get()

    def bind_worker(self, worker_index: int | None, num_workers: int | None) -> None:
        self.source.bind_worker(worker_index, num_workers)
