"""`posisp apply` on a batch: every good input processed, each bad one reported by name with its reason, no output
overwritten, a folder input expanded, a contact sheet written; odd npz mosaics and a bad -o are clear errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from dng_writer import write_dng
from ray.rllib.core.rl_module.rl_module import RLModuleSpec

from envs.sequence_isp import sequence_action_space
from posisp_dist.isp.executor import ISPExecutor
from posisp_dist.isp.registry import DEFAULT_REGISTRY
from posisp_dist.policy import SequencePolicyModule
from posisp_dist.trained.apply import apply_files, read_raw

PREVIEW = 16


@pytest.fixture(scope="module")
def policy():
    from gymnasium import spaces

    torch.manual_seed(0)
    obs = spaces.Box(0.0, 1.0, (PREVIEW, PREVIEW, 3), np.float32)
    act = sequence_action_space(DEFAULT_REGISTRY.n_modules, 10, DEFAULT_REGISTRY.n_params)
    spec = RLModuleSpec(module_class=SequencePolicyModule, observation_space=obs, action_space=act,
                        model_config={"hidden": 16})
    return spec.build(), ISPExecutor(DEFAULT_REGISTRY, np)


def mosaic(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(64, 1023, (32, 48)).astype(np.uint16)


def test_a_batch_processes_every_good_input_reports_the_bad_ones_and_overwrites_nothing(policy, tmp_path):
    from PIL import Image

    module, executor = policy
    one, two, folder = tmp_path / "one", tmp_path / "two", tmp_path / "folder"
    for d in (one, two, folder):
        d.mkdir()
    np.savez(one / "shot.npz", bayer=mosaic(1), black_level=64, white_level=1023)
    np.savez(two / "shot.npz", bayer=mosaic(2), black_level=64, white_level=1023)  # same stem, other picture
    (tmp_path / "broken.dng").write_bytes(b"not a raw file at all")
    np.savez(tmp_path / "nan.npz", bayer=np.full((32, 48), np.nan), black_level=64, white_level=1023)
    write_dng(folder / "late.dng", mosaic(3), 64, 1023, "BGGR")
    inputs = [str(one / "shot.npz"), str(tmp_path / "broken.dng"), str(tmp_path / "nan.npz"),
              str(two / "shot.npz"), str(folder)]
    out = tmp_path / "out"
    result = apply_files(module, executor, PREVIEW, inputs, out)

    assert [r["input"] for r in result.records] == [inputs[0], inputs[3], str(folder / "late.dng")]
    assert {f["input"] for f in result.failures} == {inputs[1], inputs[2]}  # the files after them still ran
    reasons = {f["input"]: f["error"] for f in result.failures}
    assert "broken.dng" in reasons[inputs[1]] and "NaN" in reasons[inputs[2]]
    first, second = (Image.open(out / f"{s}.png") for s in ("shot", "shot-2"))
    assert first.size == second.size == (48, 32)
    assert json.loads((out / "shot-2.json").read_text())["input"] == inputs[3]
    assert {"modules", "params"} <= set(json.loads((out / "late.json").read_text()))
    summary = json.loads((out / "pipelines.json").read_text())
    assert len(summary["records"]) == 3 and len(summary["failures"]) == 2
    sheet = Image.open(out / "contact_sheet.png")
    assert sheet.height >= 3 * 32 and sheet.width > 2 * 48  # a row per image: input RAW and output


@pytest.mark.parametrize(
    "bayer, extra, match",
    [
        (np.full((32, 48), -5.0), {}, "negative"),
        (np.full((32, 48), np.inf), {}, "NaN or infinite"),
        (np.zeros((32, 47)), {}, "even"),
        (np.zeros((32, 48)), {"cfa": "RGBW"}, "CFA pattern 'RGBW'"),
    ],
)
def test_odd_npz_mosaics_are_refused_naming_the_file(tmp_path, bayer, extra, match):
    path = tmp_path / "odd.npz"
    np.savez(path, bayer=bayer, black_level=0, white_level=1023, **extra)
    with pytest.raises(ValueError, match=match) as info:
        read_raw(path)
    assert str(path) in str(info.value)


def test_a_directory_input_and_a_bad_output_folder_are_one_line_errors(tmp_path, capsys):
    from posisp_dist.cli import main

    with pytest.raises(ValueError, match="is a directory"):
        read_raw(tmp_path)
    (tmp_path / "empty").mkdir()
    assert main(["apply", "--run", "0" * 32, str(tmp_path / "empty"), "-o", str(tmp_path / "o")]) == 2
    assert "without raw files" in capsys.readouterr().err
    (tmp_path / "file").write_text("x")
    assert main(["apply", "--run", "0" * 32, str(tmp_path), "-o", str(tmp_path / "file" / "out")]) == 2
    err = capsys.readouterr().err
    assert "a file is in the way" in err and len(err.strip().splitlines()) == 1
