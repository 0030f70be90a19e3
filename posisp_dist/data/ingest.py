"""`posisp data ingest`: a folder of camera raw files plus COCO JSON / Pascal VOC XML annotations -> the Parquet
shards `RawDataset` reads, so training, eval and the baselines run on them unchanged.

Per file, from the raw itself (rawpy/LibRaw): black and white level (any bit depth), CFA pattern, camera
colour matrix and as-shot white balance. Every mosaic is letterboxed to `image_size`² at the level of its 2x2
Bayer cells: the cells are packed into R, Gr, Gb, B planes in the file's own CFA order, scaled by one factor
(PIL bilinear, antialiased), centred on a canvas filled with the black level and mosaicked again as RGGB, so
every shard has one CFA whatever the cameras. Boxes get the same transform, `x' = x * sx + ox`, recorded per
file. The `srgb` column holds the reference render the built-in detector trains on: LibRaw's own rendering
of the raw (camera WB, half size), or the image of the same stem in `reference_dir`, letterboxed likewise.

Splits are given (text files of names) or drawn with a seed over the annotated candidates; the manifest
lists each split's files with their SHA-256 and a digest per split (`verify_ingested` rechecks them). Every
file left out is reported with its reason; one bad file never loses the others.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
from tqdm import tqdm

from posisp_dist.data.letterbox import letterbox, resize, transform_boxes
from posisp_dist.data.readers import RawImage, coco_image_sizes, read_coco, read_dng, read_voc
from posisp_dist.data.shards import SPLITS, RawBatch, batch_to_table, concat, fingerprint
from posisp_dist.data.staging import staged_root

INGEST_FORMAT_VERSION = 1
RAW_EXTENSIONS = frozenset(
    ".dng .cr2 .cr3 .crw .nef .nrw .arw .srf .sr2 .raf .orf .rw2 .rwl .pef .srw .3fr .erf .kdc .dcr .mos .mef "
    ".mrw .x3f .iiq .raw".split()
)
ASPECT_TOLERANCE = 0.01  # an annotation frame whose aspect differs more than this is not the raw's frame


@dataclass(frozen=True)
class IngestOptions:
    """What `ingest` reads and how it lays the shards out."""

    raw_dir: Path
    root: Path
    coco: tuple[Path, ...] = ()
    voc: tuple[Path, ...] = ()  # folders of XML files, or single XML files
    image_size: int = 512  # square training side, a multiple of 32
    classes: tuple[str, ...] | None = None  # None: every class the annotations name
    split_lists: dict[str, Path] | None = None  # {split: text file of names}; None: drawn with `seed`
    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
    seed: int = 0
    shard_size: int = 200
    reference_dir: Path | None = None
    force: bool = False
    progress: bool = True


class SkipFile(ValueError):
    """This file cannot be used; the message is the reason shown in the skip report."""


@dataclass
class Annotation:
    names: list[str]
    boxes: np.ndarray  # (k, 4) in the frame `size` (or the raw's own when None)
    size: tuple[int, int] | None
    source: str


@dataclass
class IngestReport:
    root: Path
    counts: dict[str, int]
    skipped: list[dict[str, str]] = field(default_factory=list)
    boxes_dropped: int = 0  # under 1 px after letterboxing; per file in the manifest

    def format(self) -> str:
        lines = [f"skipped {s['file']}: {s['reason']}" for s in self.skipped]
        if self.boxes_dropped:
            lines.append(f"note: {self.boxes_dropped} boxes under 1 px after letterboxing were dropped "
                         "(per file: boxes_dropped in the manifest)")
        split = " / ".join(f"{k} {v}" for k, v in self.counts.items())
        lines.append(f"ingested {sum(self.counts.values())} images ({split}) into {self.root}; "
                     f"{len(self.skipped)} skipped")
        return "\n".join(lines)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def split_digest(entries: list[dict[str, str]]) -> str:
    """SHA-256 over the sorted `name sha256` lines of one split."""
    text = "".join(f"{e['file']} {e['sha256']}\n" for e in sorted(entries, key=lambda e: e["file"]))
    return hashlib.sha256(text.encode()).hexdigest()


def _check_options(o: IngestOptions) -> None:
    if not o.raw_dir.is_dir():
        raise FileNotFoundError(f"raw folder not found: {o.raw_dir}")
    if not o.coco and not o.voc:
        raise ValueError("data ingest needs annotations: --coco FILE.json and/or --voc FOLDER (of XML files)")
    if o.image_size < 32 or o.image_size % 32:
        raise ValueError(f"--image-size must be a multiple of 32 (the detectors' stride), got {o.image_size}")
    if len(o.fractions) != 3 or min(o.fractions) <= 0 or abs(sum(o.fractions) - 1) > 1e-6:
        raise ValueError(f"--fractions must be three positive numbers summing to 1 (train val test), got {o.fractions}")
    if o.split_lists is not None and set(o.split_lists) != set(SPLITS):
        raise ValueError(f"--split needs one list for each of {SPLITS}, got {sorted(o.split_lists)}")
    if o.root.exists() and any(o.root.iterdir()):
        if not o.force:
            raise ValueError(f"{o.root} is not empty; pass --force to replace the dataset there")
        if not (o.root / "manifest.json").exists():
            raise ValueError(f"{o.root} is not empty and holds no posisp dataset (no manifest.json); not replacing it")


def load_annotations(o: IngestOptions, skipped: list[dict[str, str]]) -> tuple[list[str], dict[str, Annotation]]:
    """All annotation sources keyed by image stem; an image annotated twice is left out (ambiguous)."""
    found: dict[str, list[Annotation]] = {}
    category_order: list[str] = []
    for path in o.coco:
        names, targets = read_coco(path)  # a malformed COCO file is a clear error: it holds every image
        category_order += [n for n in names if n not in category_order]
        sizes = coco_image_sizes(path)
        for file_name, t in targets.items():
            ann = Annotation([names[i] for i in t["labels"]], t["boxes"], sizes.get(file_name), f"coco:{path.name}")
            found.setdefault(Path(file_name).stem, []).append(ann)
    for entry in o.voc:
        xmls = sorted(entry.glob("*.xml")) if entry.is_dir() else [entry]
        if entry.is_dir() and not xmls:
            raise ValueError(f"--voc {entry}: no .xml files in it")
        for xml in xmls:
            try:
                v = read_voc(xml)
            except (ValueError, FileNotFoundError) as e:
                skipped.append({"file": str(xml), "reason": f"unreadable annotation ({e})"})
                continue
            found.setdefault(Path(v.file_name).stem, []).append(Annotation(v.names, v.boxes, v.size, f"voc:{xml.name}"))
    out = {}
    for stem, anns in found.items():
        if len(anns) > 1:
            skipped.append({"file": stem, "reason": f"annotated more than once ({', '.join(a.source for a in anns)})"})
        else:
            out[stem] = anns[0]
    used = sorted({n for a in out.values() for n in a.names} - set(category_order))
    classes = list(o.classes) if o.classes else category_order + used
    return classes, out


def _read_list(path: Path) -> list[str]:
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        raise FileNotFoundError(f"split list not found: {path}") from None
    except IsADirectoryError:
        raise ValueError(f"split list {path} is a folder; give a text file with one raw file name a line") from None
    except UnicodeDecodeError:
        raise ValueError(f"split list {path} is not a text file") from None
    return [Path(s.strip()).stem for s in lines if s.strip() and not s.lstrip().startswith("#")]


def candidates(o: IngestOptions, classes: list[str], anns: dict[str, Annotation], skipped: list) -> dict[str, Path]:
    """{stem: raw path} of the raw files that can be ingested before reading them; the rest go to `skipped`."""
    inputs = {p.resolve() for p in (*o.coco, *o.voc)}
    by_stem: dict[str, list[Path]] = {}
    for p in sorted(o.raw_dir.iterdir()):
        if p.name.startswith(".") or not p.is_file() or p.resolve() in inputs:
            continue
        if p.suffix.lower() not in RAW_EXTENSIONS:
            skipped.append({"file": p.name, "reason": f"not a raw file (extension {p.suffix or 'none'})"})
            continue
        by_stem.setdefault(p.stem, []).append(p)
    out = {}
    for stem, paths in by_stem.items():
        ann = anns.get(stem)
        unknown = sorted(set(ann.names) - set(classes)) if ann else []
        if len(paths) > 1:
            reason = f"several raw files share the name {stem!r}: {', '.join(q.name for q in paths)}"
        elif ann is None:
            reason = "no annotation"
        elif unknown:
            reason = f"unknown class {', '.join(map(repr, unknown))} (classes: {', '.join(classes)})"
        else:
            out[stem] = paths[0]
            continue
        skipped += [{"file": q.name, "reason": reason} for q in paths]
    for stem in sorted(set(anns) - set(by_stem)):
        skipped.append({"file": stem, "reason": f"annotated ({anns[stem].source}) but no raw file in {o.raw_dir}"})
    return out


def assign_splits(o: IngestOptions, stems: list[str], skipped: list) -> dict[str, list[str]]:
    """Given lists (by file name or stem), or a seeded permutation of the sorted candidates."""
    if o.split_lists is not None:
        lists = {s: _read_list(o.split_lists[s]) for s in SPLITS}
        seen: dict[str, str] = {}
        for split, names in lists.items():
            for n in names:
                if n in seen:
                    raise ValueError(f"{n!r} is in both the {seen[n]} and the {split} split lists")
                seen[n] = split
        have = set(stems)
        for n in sorted(set(seen) - have):
            skipped.append({"file": n, "reason": f"in the {seen[n]} split list but not ingestable (see above)"})
        for n in sorted(have - set(seen)):
            skipped.append({"file": n, "reason": "in no split list"})
        return {s: sorted(n for n in lists[s] if n in have) for s in SPLITS}
    n = len(stems)
    n_val, n_test = (max(1, round(f * n)) for f in o.fractions[1:])
    if n - n_val - n_test < 1:
        raise ValueError(f"only {n} annotated raw files: too few for train, val and test splits")
    order = np.random.default_rng(o.seed).permutation(sorted(stems)).tolist()
    cut = {"test": order[:n_test], "val": order[n_test : n_test + n_val], "train": order[n_test + n_val :]}
    return {s: sorted(cut[s]) for s in SPLITS}


def _reference(o: IngestOptions, stem: str, raw: RawImage) -> np.ndarray:
    if o.reference_dir is None:
        assert raw.render is not None
        return raw.render
    found = sorted(p for p in o.reference_dir.glob(f"{stem}.*") if not p.name.startswith("."))
    if not found:
        raise SkipFile(f"no reference image {stem}.* in {o.reference_dir}")
    if found[0].suffix.lower() in RAW_EXTENSIONS:
        try:
            return read_dng(found[0], render=True).render  # type: ignore[return-value]
        except ValueError as e:
            raise SkipFile(f"unreadable reference: {e}") from None
    from PIL import Image, UnidentifiedImageError

    try:
        return np.asarray(Image.open(found[0]).convert("RGB"))
    except (OSError, UnidentifiedImageError) as e:
        raise SkipFile(f"unreadable reference: {found[0]} ({e})") from None


def ingest_one(o: IngestOptions, path: Path, ann: Annotation, classes: list[str], row_id: int) -> tuple[RawBatch, dict]:
    """One raw file -> a one-row batch and its manifest entry; `SkipFile` (naming the cause) if it cannot be used."""
    try:
        raw = read_dng(path, render=o.reference_dir is None)
    except (ValueError, FileNotFoundError) as e:
        raise SkipFile(f"unreadable raw: {str(e).removeprefix(f'{path}: ')}") from None
    h, w = raw.bayer.shape
    if ann.size is not None and abs(ann.size[0] / ann.size[1] - w / h) > ASPECT_TOLERANCE * w / h:
        raise SkipFile(f"annotation frame {ann.size[0]}x{ann.size[1]} ({ann.source}) does not match the raw's "
                         f"{w}x{h} (rotated or cropped?)")
    _check_boxes(ann, (w, h))
    counts, scale, offset, content = letterbox(raw, o.image_size)
    boxes, keep = transform_boxes(ann.boxes, ann.size, (w, h), scale, offset, content)
    labels = np.asarray([classes.index(n) for n in ann.names], np.int64)
    srgb = np.zeros((o.image_size, o.image_size, 3), np.uint8)
    ref = resize(_reference(o, path.stem, raw).astype(np.float32), (content[1], content[0]))
    srgb[offset[1] : offset[1] + content[1], offset[0] : offset[0] + content[0]] = np.clip(np.round(ref), 0, 255)
    boxes, labels = boxes[keep], labels[keep]
    one = RawBatch(
        ids=np.array([row_id]), raw=counts[None], black_level=np.array([raw.black_level], np.float32),
        white_level=np.array([raw.white_level], np.float32), cam2rgb=raw.cam2rgb[None], srgb=srgb[None],
        boxes=[boxes], labels=[labels], cfa="RGGB",
        extra={"wb_gains": raw.wb_gains[None], "exposure_ratio": np.ones(1, np.float32),
               "shot_noise": np.zeros(1, np.float32), "read_noise": np.zeros(1, np.float32)},
    )
    entry = {
        "file": path.name, "id": row_id, "cfa": raw.cfa, "black_level": raw.black_level,
        "white_level": raw.white_level, "bit_depth": int(np.ceil(np.log2(raw.white_level + 1))),
        "wb_gains": raw.wb_gains.round(6).tolist(), "cam2rgb": raw.cam2rgb.round(6).tolist(), "raw_size": [w, h],
        "annotation": ann.source, "annotation_size": list(ann.size) if ann.size else None,
        "scale": [round(s, 8) for s in scale], "offset": list(offset), "boxes": int(keep.sum()),
        "boxes_dropped": int((~keep).sum()),
        "targets_sha256": hashlib.sha256(boxes.tobytes() + labels.astype("<i8").tobytes()).hexdigest(),
    }
    return one, entry


def _check_boxes(ann: Annotation, raw_wh: tuple[int, int]) -> None:
    """SkipFile when a box is not finite or lies wholly outside its annotation frame (another image's boxes, or
    a rotated one): such a file is reported, not ingested with boxes quietly dropped."""
    boxes = np.asarray(ann.boxes, np.float64).reshape(-1, 4)
    if not np.isfinite(boxes).all():
        raise SkipFile(f"non-finite box coordinates ({ann.source})")
    fw, fh = ann.size or raw_wh
    outside = (boxes[:, 2] <= 0) | (boxes[:, 3] <= 0) | (boxes[:, 0] >= fw) | (boxes[:, 1] >= fh)
    if outside.any():
        raise SkipFile(f"{int(outside.sum())} box(es) lie wholly outside the {fw}x{fh} frame ({ann.source}): "
                       "another image's annotation, or a rotated one?")


def ingest(o: IngestOptions) -> IngestReport:
    """Ingest `o.raw_dir` into shards under `o.root`; returns the counts and the skip report (also in the manifest)."""
    _check_options(o)
    skipped: list[dict[str, str]] = []
    classes, anns = load_annotations(o, skipped)
    if not classes:
        raise ValueError("the annotations name no classes")
    paths = candidates(o, classes, anns, skipped)
    splits = assign_splits(o, list(paths), skipped)
    with staged_root(o.root) as staging:  # written beside the root, renamed into place when complete
        written = replace(o, root=staging)
        files: dict[str, dict[str, Any]] = {}
        listed: dict[str, list[dict[str, str]]] = {}
        total = sum(len(v) for v in splits.values())
        with tqdm(total=total, desc=f"ingesting {o.raw_dir}", unit="file", disable=not o.progress) as bar:
            for split_id, split in enumerate(SPLITS):
                listed[split] = _ingest_split(written, split, split_id, [(paths[s], anns[s]) for s in splits[split]],
                                              classes, files, skipped, bar)
        empty = [s for s in SPLITS if not listed[s]]
        if empty:
            raise ValueError(f"no images left in split(s) {', '.join(empty)} after skipping; see the report:\n"
                             + "\n".join(f"  {s['file']}: {s['reason']}" for s in skipped))
        manifest = _manifest(o, classes, files, listed, skipped)
        (staging / "manifest.json").write_text(json.dumps(manifest, indent=2))  # last: marks the dataset complete
    return IngestReport(o.root, manifest["counts"], skipped, sum(e["boxes_dropped"] for e in files.values()))


def _manifest(o: IngestOptions, classes: list[str], files: dict, listed: dict, skipped: list) -> dict[str, Any]:
    """The ingested dataset's manifest: what was read, how, and what was left out."""
    counts = {s: len(listed[s]) for s in SPLITS}
    settings = {"image_size": o.image_size, "classes": classes, "v": INGEST_FORMAT_VERSION,
                "reference": "libraw" if o.reference_dir is None else "reference_dir"}
    manifest = {
        "source": "ingested",
        "fingerprint": fingerprint({"files": files, "settings": settings}),
        "format_version": INGEST_FORMAT_VERSION,
        "classes": classes,
        "image_size": o.image_size,
        "cfa": "RGGB",
        "counts": counts,
        "objects": {s: sum(files[e["file"]]["boxes"] for e in listed[s]) for s in SPLITS},
        "letterbox": {
            "size": o.image_size, "resample": "bilinear (PIL, antialiased) on the R, Gr, Gb, B planes of 2x2 cells",
            "padding": "black level (raw), 0 (srgb)", "cfa": "every mosaic re-laid as RGGB",
            "boxes": "x' = x * scale[0] + offset[0], y' = y * scale[1] + offset[1] (per file, after scaling an "
                     "annotation frame of another size to the raw's), clipped to the content; boxes under 1 px dropped",
        },
        "reference": settings["reference"] if o.reference_dir is None else str(o.reference_dir),
        "splits": listed,
        "split_digests": {s: split_digest(listed[s]) for s in SPLITS},
        "split_method": ({"mode": "given", "lists": {s: str(p) for s, p in o.split_lists.items()}}
                         if o.split_lists else {"mode": "drawn", "seed": o.seed, "fractions": list(o.fractions)}),
        "files": files,
        "skipped": skipped,
        "inputs": {"raw_dir": str(o.raw_dir), "coco": [str(p) for p in o.coco], "voc": [str(p) for p in o.voc]},
    }
    return manifest


def _ingest_split(o, split, split_id, items, classes, files, skipped, bar) -> list[dict[str, str]]:
    """Read, letterbox and write one split's shards; returns its `{file, sha256}` list."""
    out, current, n_shards = [], [], 0

    def flush() -> None:
        nonlocal current, n_shards
        if current:
            (o.root / split).mkdir(parents=True, exist_ok=True)
            pq.write_table(batch_to_table(concat(current)), o.root / split / f"part-{n_shards:05d}.parquet",
                           compression="zstd")
            current, n_shards = [], n_shards + 1

    for i, (path, ann) in enumerate(items):
        bar.update(1)
        try:
            one, entry = ingest_one(o, path, ann, classes, split_id * 10_000_000 + i)
        except SkipFile as e:
            skipped.append({"file": path.name, "reason": str(e)})
            continue
        entry.update(split=split, sha256=sha256_file(path))
        files[path.name] = entry
        out.append({"file": path.name, "sha256": entry["sha256"]})
        current.append(one)
        if len(current) == o.shard_size:
            flush()
    flush()
    return out


def verify_ingested(root: str | Path, raw_dir: str | Path) -> list[str]:
    """Recheck an ingested root's split lists against the raw files: [] when every checksum and digest holds."""
    manifest = json.loads((Path(root) / "manifest.json").read_text())
    if manifest.get("source") != "ingested":
        raise ValueError(f"{root} does not hold ingested data (no checksums to verify)")
    problems = []
    for split, entries in manifest["splits"].items():
        if split_digest(entries) != manifest["split_digests"][split]:
            problems.append(f"{split}: the file list does not match its digest (manifest edited?)")
        for e in entries:
            path = Path(raw_dir) / e["file"]
            if not path.exists():
                problems.append(f"{split}: {e['file']} is missing from {raw_dir}")
            elif not path.is_file():
                problems.append(f"{split}: {e['file']} in {raw_dir} is no longer a file")
            elif sha256_file(path) != e["sha256"]:
                problems.append(f"{split}: {e['file']} has changed (SHA-256 differs)")
    return problems
