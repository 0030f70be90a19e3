"""Unprocessing, dataset build and Parquet shards, and the DNG / COCO readers on files made here."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
from dng_writer import write_dng

from posisp_dist.config import DataConfig, LowLightConfig, UnprocessConfig
from posisp_dist.data.build import build_dataset, data_fingerprint
from posisp_dist.data.readers import read_coco, read_dng
from posisp_dist.data.shards import RawDataset
from posisp_dist.data.unprocess import capture_low_light, unprocess
from posisp_dist.isp.raw import demosaic_bilinear
from posisp_dist.isp.render import smoothstep


def _srgb(h=32, w=32):
    y, x = np.mgrid[0:h, 0:w] / max(h, w)
    return np.clip(np.stack([0.2 + 0.6 * x, 0.3 + 0.4 * y, 0.5 + 0.3 * np.sin(6 * x)], -1), 0, 1).astype(np.float32)


def test_unprocess_then_process_recovers_srgb():
    """Brooks' forward process (WB gains, demosaic, cam2rgb, gamma, tone) inverts unprocess."""
    srgb = _srgb()
    bayer, meta = unprocess(srgb, np.random.default_rng(0), UnprocessConfig())
    assert bayer.shape == (32, 32) and 0 <= bayer.min() and bayer.max() <= 1
    gains = meta.wb_gains * meta.rgb_gain
    rgb = demosaic_bilinear(bayer[None])[0] * gains
    rgb = np.clip(rgb @ meta.cam2rgb.T, 1e-8, 1) ** (1 / 2.2)
    err = np.abs(smoothstep(rgb) - srgb)[2:-2, 2:-2]
    assert err.mean() < 0.02


def test_low_light_capture_darkens_and_adds_noise():
    bayer = np.full((64, 64), 0.5, np.float32)
    _, meta = unprocess(np.zeros((4, 4, 3), np.float32), np.random.default_rng(0), UnprocessConfig())
    cfg = LowLightConfig(exposure_ratio=(8.0, 8.0), shot_noise=(0.01, 0.01), read_noise_std=0.0)
    counts, meta2, black, white = capture_low_light(bayer, meta, np.random.default_rng(1), cfg)
    assert counts.dtype == np.uint16 and counts.max() <= white and meta2.exposure_ratio == pytest.approx(8.0)
    x = (counts.astype(np.float64) - black) / (white - black)
    assert x.mean() == pytest.approx(0.5 / 8, rel=0.05)
    expected_var = 0.5 / 8 * meta2.shot_noise + meta2.read_noise
    assert x.var() == pytest.approx(expected_var, rel=0.15)


def test_build_is_deterministic_and_sharded(tmp_path, tiny_cfg):
    cfg = tiny_cfg.data.model_copy(
        update={"root": str(tmp_path / "a"), "n_train": 10, "n_val": 3, "n_test": 3, "shard_size": 4}
    )
    build_dataset(cfg, seed=5, progress=False)
    build_dataset(cfg.model_copy(update={"root": str(tmp_path / "b")}), seed=5, progress=False)
    a, b = RawDataset(tmp_path / "a", "train"), RawDataset(tmp_path / "b", "train")
    assert len(a) == 10 and len(a.shard_paths) == 3
    ba, bb = a.load(), b.load()
    np.testing.assert_array_equal(ba.raw, bb.raw)
    np.testing.assert_array_equal(ba.srgb, bb.srgb)
    assert a.fingerprint == b.fingerprint == data_fingerprint(cfg, 5)
    assert data_fingerprint(cfg, 6) != a.fingerprint
    # every worker gets distinct shards that together cover the split
    parts = [a.shards_for_worker(k, 2) for k in range(2)]
    assert sorted(parts[0] + parts[1]) == [0, 1, 2] and not set(parts[0]) & set(parts[1])
    shard = a.read_shard(parts[1][0])
    assert shard.raw.dtype == np.uint16 and shard.cam2rgb.shape == (len(shard), 3, 3)
    assert all(len(bx) == len(lb) >= 1 for bx, lb in zip(shard.boxes, shard.labels, strict=True))
    meta = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert meta["counts"] == {"train": 10, "val": 3, "test": 3}


def test_boxes_cover_drawn_objects(tiny_data):
    batch = RawDataset(tiny_data, "val").load()
    for img, boxes in zip(batch.srgb, batch.boxes, strict=True):
        for x0, y0, x1, y1 in boxes.astype(int):
            assert 0 <= x0 < x1 <= img.shape[1] and 0 <= y0 < y1 <= img.shape[0]


def test_corrupt_shard_and_missing_dataset_raise(tmp_path, tiny_cfg):
    cfg = tiny_cfg.data.model_copy(update={"root": str(tmp_path / "c"), "n_train": 2, "n_val": 1, "n_test": 1})
    build_dataset(cfg, progress=False)
    ds = RawDataset(tmp_path / "c", "train")
    with open(ds.shard_paths[0], "r+b") as f:
        f.seek(0)
        f.write(b"garbage!" * 8)
    with pytest.raises(ValueError, match="corrupt or unreadable"):
        ds.read_shard(0)
    with pytest.raises(FileNotFoundError, match="posisp data build"):
        RawDataset(tmp_path / "nowhere", "train")
    with pytest.raises(ValueError, match="unknown split"):
        RawDataset(tmp_path / "c", "holdout")


def test_wrong_size_row_is_reported(tmp_path, tiny_cfg):
    cfg = tiny_cfg.data.model_copy(update={"root": str(tmp_path / "d"), "n_train": 2, "n_val": 1, "n_test": 1})
    build_dataset(cfg, progress=False)
    path = RawDataset(tmp_path / "d", "train").shard_paths[0]
    t = pq.read_table(path)
    col = t.column("raw").to_pylist()
    col[1] = col[1][:-10]
    pq.write_table(t.set_column(t.schema.get_field_index("raw"), "raw", [col]), path)
    with pytest.raises(ValueError, match="row 1 .* wrong size"):
        RawDataset(tmp_path / "d", "train").read_shard(0)


@pytest.mark.parametrize("cfa", ["RGGB", "BGGR"])
def test_read_dng_round_trip(tmp_path, cfa):
    bayer = np.random.default_rng(0).integers(64, 4095, (32, 48)).astype(np.uint16)
    r = read_dng(write_dng(tmp_path / "x.dng", bayer, 64, 4095, cfa))
    np.testing.assert_array_equal(r.bayer, bayer)
    assert (r.cfa, r.black_level, r.white_level) == (cfa, 64.0, 4095.0)
    np.testing.assert_allclose(r.wb_gains, [2.0, 1.0, 1.5], rtol=1e-5)  # 1 / AsShotNeutral, green = 1
    assert r.cam2rgb.shape == (3, 3) and np.isfinite(r.cam2rgb).all()


def test_read_dng_errors(tmp_path):
    bad = tmp_path / "bad.dng"
    bad.write_bytes(b"II*\x00" + b"\x00" * 64)
    with pytest.raises(ValueError, match="corrupt or unsupported raw file"):
        read_dng(bad)
    with pytest.raises(FileNotFoundError, match="raw file not found"):
        read_dng(tmp_path / "missing.dng")
    good = write_dng(tmp_path / "cut.dng", np.zeros((64, 64), np.uint16), 0, 1023).read_bytes()
    (tmp_path / "cut.dng").write_bytes(good[: len(good) // 3])  # truncated mid-way through the pixel data
    with pytest.raises(ValueError, match="cut.dng: corrupt or unsupported"):
        read_dng(tmp_path / "cut.dng")


def test_read_coco(tmp_path):
    ann = {
        "images": [{"id": 7, "file_name": "a.dng"}, {"id": 8, "file_name": "b.dng"}],
        "categories": [{"id": 3, "name": "car"}, {"id": 1, "name": "person"}],
        "annotations": [{"id": 1, "image_id": 7, "category_id": 3, "bbox": [10, 20, 5, 6]}],
    }
    p = tmp_path / "ann.json"
    p.write_text(json.dumps(ann))
    classes, targets = read_coco(p)
    assert classes == ["person", "car"]
    np.testing.assert_allclose(targets["a.dng"]["boxes"], [[10, 20, 15, 26]])
    assert targets["a.dng"]["labels"].tolist() == [1] and len(targets["b.dng"]["labels"]) == 0
    ann["annotations"][0]["category_id"] = 99
    p.write_text(json.dumps(ann))
    with pytest.raises(ValueError, match="unknown category_id 99"):
        read_coco(p)
    p.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        read_coco(p)


def test_data_config_rejects_bad_values():
    with pytest.raises(ValueError, match="even"):
        DataConfig(image_size=65)
    with pytest.raises(ValueError, match="unknown object classes"):
        DataConfig(classes=("disc", "dragon"))
    with pytest.raises(ValueError, match="exposure_ratio"):
        LowLightConfig(exposure_ratio=(8.0, 2.0))


def test_a_format_1_shard_names_the_rebuild_with_force(tmp_path, tiny_cfg):
    """Shards written before the instance-mask column: the error says how to replace them (--force)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    cfg = tiny_cfg.data.model_copy(update={"root": str(tmp_path / "c"), "n_train": 2, "n_val": 1, "n_test": 1})
    build_dataset(cfg, progress=False)
    ds = RawDataset(tmp_path / "c", "train")
    table = pq.read_table(ds.shard_paths[0])
    old = table.set_column(table.schema.get_field_index("instances"), "instances",
                           pa.array([None] * len(table), pa.binary()))
    pq.write_table(old, ds.shard_paths[0])
    with pytest.raises(ValueError, match=r"rebuild it with `posisp data build --force`.*`posisp data ingest --force`"):
        ds.read_shard(0)
