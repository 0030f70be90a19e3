"""Build the built-in low-light raw dataset: scenes -> unprocess -> low-light capture -> Parquet shards."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from tqdm import tqdm

from posisp_dist.config import DataConfig
from posisp_dist.data.scenes import make_scene
from posisp_dist.data.shards import SPLITS, RawBatch, fingerprint, write_split
from posisp_dist.data.staging import check_replaceable, staged_root
from posisp_dist.data.unprocess import capture_low_light, unprocess

DATA_FORMAT_VERSION = 2  # bump when the generator changes, so cached datasets are rebuilt (2: instance masks)


def data_fingerprint(cfg: DataConfig, seed: int) -> str:
    # where the shards live and how they travel to EnvRunners do not change their content
    exclude = {"root", "transport", "source"}
    return fingerprint({"cfg": cfg.model_dump(exclude=exclude), "seed": seed, "v": DATA_FORMAT_VERSION})


def make_capture(cfg: DataConfig, seed: int, split_id: int, index: int) -> tuple[RawBatch, int]:
    """One deterministic capture; its RNG depends only on (seed, split, index)."""
    rng = np.random.default_rng([seed, split_id, index])
    scene = make_scene(rng, cfg.image_size, cfg.classes, cfg.objects_per_image, cfg.object_size)
    bayer, meta = unprocess(scene.image, rng, cfg.unprocess)
    counts, meta, black, white = capture_low_light(bayer, meta, rng, cfg.lowlight)
    one = RawBatch(
        ids=np.array([split_id * 10_000_000 + index]),
        raw=counts[None],
        black_level=np.array([black], np.float32),
        white_level=np.array([white], np.float32),
        cam2rgb=meta.cam2rgb[None].astype(np.float32),
        srgb=np.round(scene.image * 255)[None].astype(np.uint8),
        boxes=[scene.boxes],
        labels=[scene.labels],
        instances=[scene.instances],
        extra={
            "wb_gains": meta.wb_gains[None].astype(np.float32),
            "exposure_ratio": np.array([meta.exposure_ratio], np.float32),
            "shot_noise": np.array([meta.shot_noise], np.float32),
            "read_noise": np.array([meta.read_noise], np.float32),
        },
    )
    return one, len(scene.labels)


def build_dataset(cfg: DataConfig, seed: int = 0, force: bool = False, progress: bool = True) -> Path:
    """Generate all splits under cfg.root; a dataset with the same fingerprint is reused unless `force`. Only a
    root that is absent, empty or ours is (re)written, and a failed build leaves the previous dataset whole."""
    root = Path(cfg.root)
    fp = data_fingerprint(cfg, seed)
    manifest_path = root / "manifest.json"
    found = _manifest(manifest_path)
    source = found.get("source", "builtin") if found is not None else None
    if cfg.source == "ingested" or source == "ingested":  # the user's data: reused as is, never overwritten
        return _ingested_root(root, source, cfg.source)
    if found is not None and found.get("fingerprint") == fp and not force:
        return root
    check_replaceable(root)  # only what carries our manifest is ever replaced
    counts = {"train": cfg.n_train, "val": cfg.n_val, "test": cfg.n_test}
    with staged_root(root) as out:  # written beside root, renamed into place when complete
        n_objects = _write_splits(cfg, seed, counts, out, f"building {root}", progress)
        _write_manifest(out, fp, cfg, counts, n_objects, seed)
    return root


def _manifest(path: Path) -> dict | None:
    """The manifest at `path`, None when there is none; ValueError naming the file when it is unreadable."""
    if not path.exists():
        return None
    try:
        found = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"{path} is not a readable posisp manifest ({e}); move it away or rebuild with --force "
                         "after deleting it") from None
    if not isinstance(found, dict):
        raise ValueError(f"{path} is not a posisp manifest (its top level is {type(found).__name__})")
    return found


def _write_splits(cfg: DataConfig, seed: int, counts: dict[str, int], out: Path, desc: str, progress: bool) -> dict:
    """Generate every split's captures into Parquet shards under `out` -> objects per split."""
    from posisp_dist.data.shards import concat

    n_objects = {}
    with tqdm(total=sum(counts.values()), desc=desc, unit="img", disable=not progress) as bar:
        for split_id, split in enumerate(SPLITS):
            shards, current, objs = [], [], 0
            for i in range(counts[split]):
                one, k = make_capture(cfg, seed, split_id, i)
                current.append(one)
                objs += k
                if len(current) == cfg.shard_size:
                    shards.append(concat(current))
                    current = []
                bar.update(1)
            if current:
                shards.append(concat(current))
            write_split(out, split, shards)
            n_objects[split] = objs
    return n_objects


def _write_manifest(out: Path, fp: str, cfg: DataConfig, counts: dict, n_objects: dict, seed: int) -> None:
    manifest = {
        "fingerprint": fp,
        "source": "builtin",
        "classes": list(cfg.classes),
        "image_size": cfg.image_size,
        "cfa": "RGGB",
        "counts": counts,
        "objects": n_objects,
        "seed": seed,
        "format_version": DATA_FORMAT_VERSION,
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))  # written last: marks the build complete


def _ingested_root(root: Path, found: str | None, wanted: str) -> Path:
    """`root` when it holds what the config says; a clear error (and nothing deleted) otherwise."""
    if found is None:
        raise FileNotFoundError(f"data.source is ingested but {root} holds no manifest.json; run `posisp data ingest`")
    if found != wanted:
        raise ValueError(
            f"{root} holds {found} data but data.source is {wanted}: set data.source: {found}, or point data.root "
            "elsewhere (it is not rebuilt over)"
        )
    return root
