"""`posisp apply`: raw files (or folders of them) in; per input a processed PNG and the chosen pipeline with its
physical parameters (JSON); for the batch `pipelines.json` (every record and every failure) and `contact_sheet.png`
(input RAW next to the output, one row per image).

Every good input is processed even when others fail; a bad one is reported by name with its reason. Two inputs
with the same stem never overwrite each other: the later ones get `-2`, `-3`, ... added to the stem.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from posisp_dist.data.readers import RawImage, read_dng
from posisp_dist.isp.executor import ISPExecutor
from posisp_dist.isp.raw import CFA_PATTERNS, check_bayer
from posisp_dist.isp.render import input_raw

# LibRaw reads many more; these are the suffixes a folder input is searched for
RAW_SUFFIXES = (".npz", ".dng", ".cr2", ".cr3", ".nef", ".arw", ".raf", ".orf", ".rw2", ".pef", ".srw", ".raw")
SHEET_SIDE = 160  # pixels: the longer side of each picture on the contact sheet


def read_raw(path: str | Path) -> RawImage:
    """A DNG (or any LibRaw raw) via rawpy, or an `.npz` holding `bayer`, `black_level`, `white_level`[, `cfa`];
    every error names the file."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{path} is a directory, not a raw file")
    if path.suffix.lower() != ".npz":
        return read_dng(path)
    if not path.exists():
        raise FileNotFoundError(f"raw file not found: {path}")
    try:
        with np.load(path) as z:
            bayer, black, white = z["bayer"], float(z["black_level"]), float(z["white_level"])
            cfa = str(z["cfa"]) if "cfa" in z else "RGGB"
    except (KeyError, ValueError, TypeError, OSError) as e:
        raise ValueError(f"{path}: not a raw .npz with bayer, black_level and white_level ({e})") from None
    try:
        check_bayer(bayer, batched=False)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None
    if cfa not in CFA_PATTERNS:
        raise ValueError(f"{path}: unsupported CFA pattern {cfa!r}; supported: {CFA_PATTERNS}")
    if not (np.isfinite(black) and np.isfinite(white) and white > black):
        raise ValueError(f"{path}: white level {white} is not above black level {black}")
    if float(bayer.max()) > np.iinfo(np.uint16).max:
        raise ValueError(f"{path}: counts above 65535 do not fit a 16-bit sensor")
    return RawImage(bayer.astype(np.uint16), black, white, cfa, np.eye(3, dtype=np.float32), np.ones(3, np.float32))


def expand_inputs(inputs: list[str]) -> list[Path]:
    """Files as given; a folder stands for its raw files (by suffix, sorted). A folder without any is an error."""
    out: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            found = sorted(p for p in item.iterdir() if p.is_file() and p.suffix.lower() in RAW_SUFFIXES)
            if not found:
                raise ValueError(f"{item} is a folder without raw files ({', '.join(RAW_SUFFIXES)})")
            out += found
        else:
            out.append(item)
    return out


def output_dir(path: str | Path) -> Path:
    """The output folder, made if missing; a clear error when it cannot be (a file in the way, no permission)."""
    out = Path(path)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise ValueError(f"-o {out}: cannot make the output folder, a file is in the way") from None
    except OSError as e:
        raise ValueError(f"-o {out}: cannot make the output folder ({e.strerror or e})") from None
    return out


def unique_stems(paths: list[Path]) -> list[str]:
    """Output stem per input: its own stem, with `-2`, `-3`, ... for repeats, so no output overwrites another."""
    seen: dict[str, int] = {}
    taken = {p.stem for p in paths}
    stems = []
    for p in paths:
        n = seen.get(p.stem, 0) + 1
        seen[p.stem] = n
        name = p.stem
        while n > 1 and (name := f"{p.stem}-{n}") in taken:
            n += 1
        taken.add(name)
        stems.append(name)
    return stems


@dataclass
class ApplyResult:
    """What a batch produced: one record per good input, one (input, reason) per bad one."""

    records: list[dict[str, Any]] = field(default_factory=list)
    failures: list[dict[str, str]] = field(default_factory=list)
    contact_sheet: str | None = None


def apply_files(
    module: Any, executor: ISPExecutor, preview_size: int, inputs: list[str], out_dir: str | Path,
    stepwise_steps: int | None = None, progress: bool = False,
) -> ApplyResult:
    """Process each raw file with its greedy pipeline; writes `<stem>.png` and `<stem>.json` per good input."""
    from PIL import Image
    from tqdm.auto import tqdm

    from posisp_dist.isp.xp import to_numpy
    from posisp_dist.trained.inference import apply_policy

    out = output_dir(out_dir)
    paths = expand_inputs(inputs)
    result, pairs = ApplyResult(), []
    for src, stem in zip(tqdm(paths, desc="apply", unit="img", disable=not progress), unique_stems(paths), strict=True):
        try:
            raw = read_raw(src)
            xp = executor.xp
            img = input_raw(xp.asarray(raw.bayer[None]), np.array([raw.black_level]), np.array([raw.white_level]),
                            raw.cfa, xp)
            done, tokens, params = apply_policy(module, img, executor, preview_size, stepwise_steps=stepwise_steps)
        except (ValueError, OSError) as e:  # unreadable, corrupt or odd input: report it and go on
            result.failures.append({"input": str(src), "error": str(e)})
            continue
        pixels = np.round(to_numpy(done[0]) * 255).astype(np.uint8)
        png = out / f"{stem}.png"
        Image.fromarray(pixels).save(png)
        record = {"input": str(src), "output": str(png), **executor.decode(tokens[0], params[0]).to_json()}
        (out / f"{stem}.json").write_text(json.dumps(record, indent=2))
        result.records.append(record)
        pairs.append((stem, np.round(to_numpy(img[0]) * 255).astype(np.uint8), pixels))
    if pairs:
        contact_sheet(pairs).save(out / "contact_sheet.png")
        result.contact_sheet = str(out / "contact_sheet.png")
    summary = {"records": result.records, "failures": result.failures}
    (out / "pipelines.json").write_text(json.dumps(summary, indent=2))
    return result


def contact_sheet(pairs: list[tuple[str, np.ndarray, np.ndarray]]) -> Any:
    """One row per image: its name, the input RAW rendering and the output, each scaled to SHEET_SIDE."""
    from PIL import Image, ImageDraw

    label_w, pad = 120, 4
    thumbs = []
    for name, before, after in pairs:
        row = []
        for pixels in (before, after):
            pic = Image.fromarray(pixels)
            pic.thumbnail((SHEET_SIDE, SHEET_SIDE))
            row.append(pic)
        thumbs.append((name, row))
    row_h = max(p.height for _, row in thumbs for p in row) + pad
    sheet = Image.new("RGB", (label_w + 2 * (SHEET_SIDE + pad), row_h * len(thumbs) + 16), "white")
    draw = ImageDraw.Draw(sheet)
    draw.text((label_w, 2), "input RAW", fill="black")
    draw.text((label_w + SHEET_SIDE + pad, 2), "learned ISP", fill="black")
    for i, (name, row) in enumerate(thumbs):
        y = 16 + i * row_h
        draw.text((2, y + 2), name[:18], fill="black")
        for j, pic in enumerate(row):
            sheet.paste(pic, (label_w + j * (SHEET_SIDE + pad), y))
    return sheet
