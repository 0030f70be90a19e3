"""`posisp apply`: raw files in, processed PNGs and the chosen pipeline of each out."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from posisp_dist.data.readers import RawImage, read_dng
from posisp_dist.isp.executor import ISPExecutor
from posisp_dist.isp.raw import check_bayer
from posisp_dist.isp.render import input_raw


def read_raw(path: str | Path) -> RawImage:
    """A DNG (or any LibRaw raw) via rawpy, or an `.npz` holding `bayer`, `black_level`, `white_level`[, `cfa`]."""
    path = Path(path)
    if path.suffix.lower() != ".npz":
        return read_dng(path)
    if not path.exists():
        raise FileNotFoundError(f"raw file not found: {path}")
    try:
        with np.load(path) as z:
            bayer, black, white = z["bayer"], float(z["black_level"]), float(z["white_level"])
            cfa = str(z["cfa"]) if "cfa" in z else "RGGB"
    except (KeyError, ValueError, OSError) as e:
        raise ValueError(f"{path}: not a raw .npz with bayer, black_level and white_level ({e})") from None
    check_bayer(bayer, batched=False)
    if not white > black:
        raise ValueError(f"{path}: white level {white} is not above black level {black}")
    return RawImage(bayer.astype(np.uint16), black, white, cfa, np.eye(3, dtype=np.float32), np.ones(3, np.float32))


def apply_files(
    module: Any, executor: ISPExecutor, preview_size: int, inputs: list[str], out_dir: str | Path,
    stepwise_steps: int | None = None,
) -> list:
    """Process each raw file with its greedy pipeline; writes `<stem>.png` and `<stem>.json` per input."""
    from PIL import Image

    from posisp_dist.isp.xp import to_numpy
    from posisp_dist.train.inference import apply_policy

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    records = []
    for src in inputs:
        raw = read_raw(src)
        xp = executor.xp
        img = input_raw(xp.asarray(raw.bayer[None]), np.array([raw.black_level]), np.array([raw.white_level]),
                        raw.cfa, xp)
        result, tokens, params = apply_policy(module, img, executor, preview_size, stepwise_steps=stepwise_steps)
        png = out / f"{Path(src).stem}.png"
        Image.fromarray(np.round(to_numpy(result[0]) * 255).astype(np.uint8)).save(png)
        record = {"input": str(src), "output": str(png), **executor.decode(tokens[0], params[0]).to_json()}
        (out / f"{Path(src).stem}.json").write_text(json.dumps(record, indent=2))
        records.append(record)
    (out / "pipelines.json").write_text(json.dumps(records, indent=2))
    return records
