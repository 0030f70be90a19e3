"""Parquet shard storage of raw captures (pyarrow), readable one shard at a time by each Ray worker.

Layout: ``<root>/manifest.json`` and ``<root>/<split>/part-00000.parquet``. One row per capture: the raw
mosaic (uint16 bytes), black and white levels, CFA, camera metadata, the clean sRGB render (uint8 bytes;
the upper-bound reference and the detector's training data), the boxes and labels, and (format 2) each
image's instance map (uint8 (H, W): 0 background, k the k-th object where it is visible; empty bytes where
the source has no masks, e.g. ingested box-only annotations).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

SPLITS = ("train", "val", "test")
SCHEMA = pa.schema(
    [
        ("id", pa.int64()),
        ("height", pa.int32()),
        ("width", pa.int32()),
        ("raw", pa.binary()),
        ("cfa", pa.string()),
        ("black_level", pa.float32()),
        ("white_level", pa.float32()),
        ("cam2rgb", pa.list_(pa.float32(), 9)),
        ("wb_gains", pa.list_(pa.float32(), 3)),
        ("exposure_ratio", pa.float32()),
        ("shot_noise", pa.float32()),
        ("read_noise", pa.float32()),
        ("srgb", pa.binary()),
        ("boxes", pa.list_(pa.float32())),
        ("labels", pa.list_(pa.int32())),
        ("instances", pa.binary()),
    ]
)
SHARD_FORMAT = 2  # 2: the instances column


class DataError(ValueError):
    """A data file is corrupt, unreadable or malformed; the message names it. Not retryable: a restarted worker
    would read the same bytes, so the training driver fails the run on it instead of restarting EnvRunners."""


@dataclass
class RawBatch:
    """A set of same-sized raw captures with annotations, as host arrays."""

    ids: np.ndarray  # (N,)
    raw: np.ndarray  # (N, H, W) uint16 sensor counts
    black_level: np.ndarray  # (N,) float32
    white_level: np.ndarray  # (N,) float32
    cam2rgb: np.ndarray  # (N, 3, 3) float32
    srgb: np.ndarray  # (N, H, W, 3) uint8 clean render (zeros where unknown)
    boxes: list[np.ndarray] = field(default_factory=list)  # N x (k, 4) x0 y0 x1 y1
    labels: list[np.ndarray] = field(default_factory=list)  # N x (k,)
    cfa: str = "RGGB"
    extra: dict[str, np.ndarray] = field(default_factory=dict)
    instances: list[np.ndarray] = field(default_factory=list)  # N x (H, W) uint8, or (0, 0) where unknown

    def __post_init__(self) -> None:
        if not self.instances:
            self.instances = [np.zeros((0, 0), np.uint8)] * len(self.ids)

    def __len__(self) -> int:
        return len(self.ids)

    def take(self, idx: Sequence[int] | np.ndarray) -> RawBatch:
        idx = np.asarray(idx)
        return RawBatch(
            self.ids[idx],
            self.raw[idx],
            self.black_level[idx],
            self.white_level[idx],
            self.cam2rgb[idx],
            self.srgb[idx],
            [self.boxes[i] for i in idx],
            [self.labels[i] for i in idx],
            self.cfa,
            {k: v[idx] for k, v in self.extra.items()},
            [self.instances[i] for i in idx],
        )

    @property
    def targets(self) -> list[dict[str, np.ndarray]]:
        """Per image: boxes, labels and the instance map (object k = the k-th box; (0, 0) if unknown)."""
        return [
            {"boxes": b, "labels": lab, "instances": m}
            for b, lab, m in zip(self.boxes, self.labels, self.instances, strict=True)
        ]


def batch_to_table(batch: RawBatch) -> pa.Table:
    n, h, w = batch.raw.shape
    cols: dict[str, Any] = {
        "id": batch.ids.astype(np.int64),
        "height": np.full(n, h, np.int32),
        "width": np.full(n, w, np.int32),
        "raw": [r.astype("<u2").tobytes() for r in batch.raw],
        "cfa": [batch.cfa] * n,
        "black_level": batch.black_level.astype(np.float32),
        "white_level": batch.white_level.astype(np.float32),
        "cam2rgb": [m.reshape(9).astype(np.float32) for m in batch.cam2rgb],
        "wb_gains": [g.astype(np.float32) for g in batch.extra.get("wb_gains", np.ones((n, 3)))],
        "exposure_ratio": batch.extra.get("exposure_ratio", np.ones(n)).astype(np.float32),
        "shot_noise": batch.extra.get("shot_noise", np.zeros(n)).astype(np.float32),
        "read_noise": batch.extra.get("read_noise", np.zeros(n)).astype(np.float32),
        "srgb": [s.astype(np.uint8).tobytes() for s in batch.srgb],
        "boxes": [b.reshape(-1).astype(np.float32) for b in batch.boxes],
        "labels": [lab.astype(np.int32) for lab in batch.labels],
        "instances": [m.astype(np.uint8).tobytes() for m in batch.instances],
    }
    return pa.table(cols, schema=SCHEMA)


def table_to_batch(table: pa.Table, source: str = "table") -> RawBatch:
    """Decode a shard table; raises ValueError naming `source` if a row is malformed."""
    missing = set(SCHEMA.names) - set(table.column_names)
    if missing:
        raise DataError(f"{source}: not a posisp raw shard, missing columns {sorted(missing)}")
    d = table.to_pydict()
    n = table.num_rows
    if n == 0:
        raise DataError(f"{source}: shard holds no rows")
    h, w = int(d["height"][0]), int(d["width"][0])
    if any(hh != h or ww != w for hh, ww in zip(d["height"], d["width"], strict=True)):
        raise DataError(f"{source}: images of different sizes in one shard")
    if any(m is None for m in d["instances"]):
        raise DataError(
            f"{source}: written before shard format {SHARD_FORMAT} (no instance-mask column); rebuild it with "
            "`posisp data build --force` (built-in data) or `posisp data ingest --force` (your own)"
        )
    instances = []
    for i, m in enumerate(d["instances"]):
        if len(m) not in (0, h * w):
            raise DataError(f"{source}: row {i} (id {d['id'][i]}) has an instance map of the wrong size")
        instances.append(np.frombuffer(m, np.uint8).reshape(h, w) if m else np.zeros((0, 0), np.uint8))
    raw = np.empty((n, h, w), np.uint16)
    srgb = np.empty((n, h, w, 3), np.uint8)
    for i in range(n):
        r, s = d["raw"][i], d["srgb"][i]
        if len(r) != h * w * 2 or len(s) != h * w * 3:
            raise DataError(f"{source}: row {i} (id {d['id'][i]}) has a raw or sRGB buffer of the wrong size")
        raw[i] = np.frombuffer(r, "<u2").reshape(h, w)
        srgb[i] = np.frombuffer(s, np.uint8).reshape(h, w, 3)
    cfas = set(d["cfa"])
    if len(cfas) != 1:
        raise DataError(f"{source}: mixed CFA patterns {cfas}")
    return RawBatch(
        ids=np.asarray(d["id"], np.int64),
        raw=raw,
        black_level=np.asarray(d["black_level"], np.float32),
        white_level=np.asarray(d["white_level"], np.float32),
        cam2rgb=np.asarray(d["cam2rgb"], np.float32).reshape(n, 3, 3),
        srgb=srgb,
        boxes=[np.asarray(b, np.float32).reshape(-1, 4) for b in d["boxes"]],
        labels=[np.asarray(lab, np.int64) for lab in d["labels"]],
        cfa=cfas.pop(),
        extra={k: np.asarray(d[k], np.float32) for k in ("wb_gains", "exposure_ratio", "shot_noise", "read_noise")},
        instances=instances,
    )


def concat(batches: Sequence[RawBatch]) -> RawBatch:
    if not batches:
        raise ValueError("nothing to concatenate")
    b0 = batches[0]
    return RawBatch(
        np.concatenate([b.ids for b in batches]),
        np.concatenate([b.raw for b in batches]),
        np.concatenate([b.black_level for b in batches]),
        np.concatenate([b.white_level for b in batches]),
        np.concatenate([b.cam2rgb for b in batches]),
        np.concatenate([b.srgb for b in batches]),
        [x for b in batches for x in b.boxes],
        [x for b in batches for x in b.labels],
        b0.cfa,
        {k: np.concatenate([b.extra[k] for b in batches]) for k in b0.extra},
        [x for b in batches for x in b.instances],
    )


def write_split(root: str | Path, split: str, batches: Sequence[RawBatch]) -> list[Path]:
    """Write one Parquet file per batch under root/split; returns the paths."""
    out = Path(root) / split
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, b in enumerate(batches):
        p = out / f"part-{i:05d}.parquet"
        pq.write_table(batch_to_table(b), p, compression="zstd")
        paths.append(p)
    return paths


def fingerprint(obj: Any) -> str:
    """Short stable hash of a JSON-able object."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def assign_shards(n_shards: int, worker_index: int, num_workers: int) -> list[int]:
    """Round-robin: worker k of n gets shards k, k+n, ... (all when n <= 1); wherever the shards are stored."""
    if num_workers <= 1:
        return list(range(n_shards))
    k = worker_index % num_workers
    mine = list(range(k, n_shards, num_workers))
    return mine or [k % n_shards]  # more workers than shards: share round-robin


def read_shard_bytes(data: Any, source: str) -> RawBatch:
    """Decode one shard from its Parquet file's bytes (any buffer: bytes, a NumPy or object-store buffer)."""
    try:
        table = pq.read_table(pa.BufferReader(pa.py_buffer(data)), schema=SCHEMA)
    except (pa.ArrowInvalid, OSError) as e:
        raise DataError(f"shard {source} is corrupt or unreadable: {e}") from None
    return table_to_batch(table, source)


class RawDataset:
    """One split of a shard directory; each Ray worker reads only its own shards."""

    def __init__(self, root: str | Path, split: str) -> None:
        self.root = Path(root)
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
        manifest = self.root / "manifest.json"
        if not manifest.exists():
            raise FileNotFoundError(f"no dataset at {self.root} (missing manifest.json); run `posisp data build`")
        self.manifest: dict[str, Any] = json.loads(manifest.read_text())
        self.split = split
        self._dataset = ds.dataset(str(self.root / split), format="parquet", schema=SCHEMA)
        self.shard_paths: list[str] = sorted(self._dataset.files)
        if not self.shard_paths:
            raise FileNotFoundError(f"split {split!r} of {self.root} holds no Parquet shards")

    @property
    def classes(self) -> list[str]:
        return list(self.manifest["classes"])

    @property
    def fingerprint(self) -> str:
        return str(self.manifest["fingerprint"])

    def __len__(self) -> int:
        return int(self._dataset.count_rows())

    def read_shard(self, i: int) -> RawBatch:
        path = self.shard_paths[i]
        try:
            table = pq.read_table(path, schema=SCHEMA)
        except (pa.ArrowInvalid, OSError) as e:
            raise DataError(f"shard {path} is corrupt or unreadable: {e}") from None
        return table_to_batch(table, path)

    def check(self) -> int:
        """Read every shard once (DataError naming the first bad file) -> the number of images."""
        return sum(len(self.read_shard(i)) for i in range(len(self.shard_paths)))

    def shards_for_worker(self, worker_index: int, num_workers: int) -> list[int]:
        """Round-robin shard assignment: worker k of n reads shards k, k+n, ... (all when n <= 1)."""
        return assign_shards(len(self.shard_paths), worker_index, num_workers)

    def load(self, shards: Sequence[int] | None = None, limit: int | None = None) -> RawBatch:
        idx = range(len(self.shard_paths)) if shards is None else shards
        batch = concat([self.read_shard(i) for i in idx])
        return batch.take(np.arange(min(limit, len(batch)))) if limit else batch
