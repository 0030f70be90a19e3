"""The fused CPU kernel of the NLM denoiser (Numba): patch distances as running box sums over each row block,
the weights exp(-z) from the shared exp2 polynomial (weights below exp(-24) dropped), one pass for several
filtering strengths at once (`denoise_strengths`: the NLM twin's value and central difference in h)."""

from __future__ import annotations

from posisp_dist.isp import numba_env  # noqa: F401  (Numba's process settings: before Numba is imported)

# isort: split

from types import ModuleType

import numba as nb
import numpy as np

from posisp_dist.isp import modules as m
from posisp_dist.isp.fast_prims import _clip, _cpu_share, _exp_neg, _f32, _inline, _jit


@_inline
def _patch_sums(grey_pad, b, y0, nrows, dy, dx, search, diff, rowsum):  # noqa: ANN001
    """rowsum[r] = the 5-wide sums of the squared grey difference to offset (dy, dx) for rows y0 - 2 ..
    y0 + nrows + 1 (edge-replicated, like the reference's box filter); summing 5 of them gives a 5x5 patch."""
    h, w = grey_pad.shape[1] - 2 * search, grey_pad.shape[2] - 2 * search
    for r in range(nrows + 4):
        yy = min(max(y0 - 2 + r, 0), h - 1)
        g_c, g_o = grey_pad[b, yy + search, search:], grey_pad[b, yy + dy, dx:]
        for xx in range(w):
            v = g_c[xx] - g_o[xx]
            diff[xx + 2] = v * v
        diff[0], diff[1], diff[w + 2], diff[w + 3] = diff[2], diff[2], diff[w + 1], diff[w + 1]
        rs = rowsum[r]
        for xx in range(w):
            rs[xx] = diff[xx] + diff[xx + 1] + diff[xx + 2] + diff[xx + 3] + diff[xx + 4]


@_inline
def _nlm_job(job, blocks, rows_per_job, h, w, inv_h):  # noqa: ANN001
    """Job `job` of the NLM kernels: its image, first row, row count, 1 / (25 h), and its scratch rows."""
    b, y0 = job // blocks, (job % blocks) * rows_per_job
    nrows = min(y0 + rows_per_job, h) - y0
    scratch = np.empty(w + 4, np.float32), np.empty((nrows + 4, w), np.float32), np.empty(w, np.float32)
    return b, y0, nrows, inv_h[b] * np.float32(1 / 25), scratch[0], scratch[1], scratch[2]


@_jit
def _nlm(grey_pad, planes_pad, inv_h, search, rows_per_job, out):  # noqa: ANN001
    """Grey-guided NLM with 5x5 patches on colour planes. Jobs are (image, block of rows); a job loops over
    the search offsets, forms the squared grey difference of its rows plus a 2-pixel halo, box-filters it
    separably (`_patch_sums`) and accumulates the weights exp(-mean / h). Every inner loop is unit-stride
    so that it vectorises."""
    bsz, h, w = out.shape[0], out.shape[2], out.shape[3]
    blocks = (h + rows_per_job - 1) // rows_per_job
    for job in nb.prange(bsz * blocks):
        b, y0, nrows, scale, diff, rowsum, wt = _nlm_job(job, blocks, rows_per_job, h, w, inv_h)
        acc, wsum = np.zeros((3, nrows, w), np.float32), np.zeros((nrows, w), np.float32)
        for dy in range(2 * search + 1):
            for dx in range(2 * search + 1):
                _patch_sums(grey_pad, b, y0, nrows, dy, dx, search, diff, rowsum)
                for r in range(nrows):
                    r0, r1, r2, r3, r4 = rowsum[r], rowsum[r + 1], rowsum[r + 2], rowsum[r + 3], rowsum[r + 4]
                    ws = wsum[r]
                    for xx in range(w):
                        wt[xx] = _exp_neg((r0[xx] + r1[xx] + r2[xx] + r3[xx] + r4[xx]) * scale)
                        ws[xx] += wt[xx]
                    for c in range(3):
                        src, ac = planes_pad[b, c, y0 + r + dy, dx:], acc[c, r]
                        for xx in range(w):
                            ac[xx] += wt[xx] * src[xx]
        for c in range(3):
            for r in range(nrows):
                dst, ac, ws = out[b, c, y0 + r], acc[c, r], wsum[r]
                for xx in range(w):
                    dst[xx] = _clip(ac[xx] / ws[xx])  # ws >= 1: the centre offset always has weight 1


@_jit
def _nlm_strengths(grey_pad, planes_pad, inv_h, search, rows_per_job, out):  # noqa: ANN001
    """`_nlm` at K strengths per image in one pass (`inv_h` (B, K), `out` (K, B, 3, H, W)): the patch distances
    are computed once and weighted K times, each strength with `_nlm`'s arithmetic in `_nlm`'s order, so each
    output equals `_nlm`'s at that strength bit for bit."""
    bsz, h, w, k_n = out.shape[1], out.shape[3], out.shape[4], out.shape[0]
    blocks = (h + rows_per_job - 1) // rows_per_job
    for job in nb.prange(bsz * blocks):
        b, y0, nrows, _, diff, rowsum, wt = _nlm_job(job, blocks, rows_per_job, h, w, inv_h[:, 0])
        acc, wsum = np.zeros((k_n, 3, nrows, w), np.float32), np.zeros((k_n, nrows, w), np.float32)
        for dy in range(2 * search + 1):
            for dx in range(2 * search + 1):
                _patch_sums(grey_pad, b, y0, nrows, dy, dx, search, diff, rowsum)
                for r in range(nrows):
                    r0, r1, r2, r3, r4 = rowsum[r], rowsum[r + 1], rowsum[r + 2], rowsum[r + 3], rowsum[r + 4]
                    for k in range(k_n):
                        scale, ws = inv_h[b, k] * np.float32(1 / 25), wsum[k, r]
                        for xx in range(w):
                            wt[xx] = _exp_neg((r0[xx] + r1[xx] + r2[xx] + r3[xx] + r4[xx]) * scale)
                            ws[xx] += wt[xx]
                        for c in range(3):
                            src, ac = planes_pad[b, c, y0 + r + dy, dx:], acc[k, c, r]
                            for xx in range(w):
                                ac[xx] += wt[xx] * src[xx]
        for k in range(k_n):
            for c in range(3):
                for r in range(nrows):
                    dst, ac, ws = out[k, b, c, y0 + r], acc[k, c, r], wsum[k, r]
                    for xx in range(w):
                        dst[xx] = _clip(ac[xx] / ws[xx])


def denoise(img: np.ndarray, params: np.ndarray, xp: ModuleType = np, search: int = 5, patch: int = 2) -> np.ndarray:
    if patch != 2:
        return m.denoise(img, params, xp, search, patch)  # the kernel's box filter is written for 5x5
    return np.ascontiguousarray(_denoise_planes(img, params[:, :1], search)[0].transpose(0, 2, 3, 1))


@_cpu_share
def denoise_strengths(img: np.ndarray, strengths: np.ndarray, search: int = 5) -> np.ndarray:
    """`denoise` of (B, H, W, 3) at K strengths per image, `strengths` (B, K) -> (K, B, 3, H, W) planes, in one
    kernel pass; each equal, bit for bit, to `denoise` at that strength (the NLM twin's value and difference)."""
    return _denoise_planes(img, strengths, search)


def _denoise_planes(img: np.ndarray, strengths: np.ndarray, search: int) -> np.ndarray:
    x = _f32(img)
    pad = ((0, 0), (search, search), (search, search))
    grey_pad = _f32(np.pad(m.luminance(x, np), pad, mode="reflect"))
    planes_pad = _f32(np.pad(x.transpose(0, 3, 1, 2), ((0, 0), (0, 0), *pad[1:]), mode="reflect"))
    inv_h = _f32(1.0 / np.asarray(strengths))  # as the kernel always did: one rounding to float32
    out = np.empty((inv_h.shape[1], x.shape[0], 3, x.shape[1], x.shape[2]), np.float32)
    # enough row blocks that every thread has work even for one image; each block recomputes a 4-row halo
    rows = min(max(16, -(-x.shape[1] * x.shape[0] // (4 * nb.get_num_threads()))), x.shape[1])
    if inv_h.shape[1] == 1:
        _nlm(grey_pad, planes_pad, inv_h[:, 0], search, rows, out[0])
    else:
        _nlm_strengths(grey_pad, planes_pad, inv_h, search, rows, out)
    return out
