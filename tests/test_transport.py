"""`data.transport` pieces that need no Ray: shards and task weights rebuilt from bytes equal what the disk gives,
shard assignment is a partition, and a bad transport name is refused."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from posisp_dist.config import ConfigError, load_config
from posisp_dist.data.shards import RawDataset, assign_shards, read_shard_bytes


def test_a_shard_decoded_from_bytes_equals_the_shard_read_from_disk(tiny_data):
    ds = RawDataset(tiny_data, "train")
    for i, path in enumerate(ds.shard_paths):
        from_bytes = read_shard_bytes(np.frombuffer(open(path, "rb").read(), np.uint8), f"shard {i}")
        from_disk = ds.read_shard(i)
        np.testing.assert_array_equal(from_bytes.ids, from_disk.ids)
        np.testing.assert_array_equal(from_bytes.raw, from_disk.raw)
        assert all(np.array_equal(a, b) for a, b in zip(from_bytes.boxes, from_disk.boxes, strict=True))
    with pytest.raises(ValueError, match="shard train/part-9"):
        read_shard_bytes(b"not parquet", "train/part-9")


def test_the_detector_rebuilt_from_shipped_bytes_scores_like_the_cached_one(tiny_cfg, tiny_data, tiny_task):
    from posisp_dist.tasks import task_model_from_weights, task_weights_path

    path = task_weights_path(tiny_cfg.task, tiny_data)
    assert path is not None and path.is_file()
    shipped = task_model_from_weights(tiny_cfg.task, tiny_task.classes, np.frombuffer(path.read_bytes(), np.uint8))
    batch = RawDataset(tiny_data, "val").load(limit=8)
    images = batch.srgb.astype(np.float32) / 255.0
    np.testing.assert_allclose(shipped.score(images, batch.targets), tiny_task.score(images, batch.targets), atol=1e-6)
    with pytest.raises(ValueError, match="none were shipped"):
        task_model_from_weights(tiny_cfg.task, tiny_task.classes, None)


@pytest.mark.parametrize("n_shards,n_workers", [(4, 2), (5, 2), (6, 4), (2, 3)])
def test_shard_assignment_covers_every_shard(n_shards, n_workers):
    parts = [assign_shards(n_shards, k, n_workers) for k in range(n_workers)]
    assert set().union(*map(set, parts)) == set(range(n_shards))
    if n_workers <= n_shards:  # a partition: no shard read twice
        assert sum(len(p) for p in parts) == n_shards


def test_a_shipment_survives_rllibs_config_deep_copies():
    from posisp_dist.data.transport import Shipment

    shipment = Shipment({"classes": ["disc"], "fingerprint": "f"}, {"train": ("ref0", "ref1")})
    assert copy.deepcopy({"shipment": shipment})["shipment"] is shipment
    assert shipment.num_shards("train") == 2 and shipment.classes == ["disc"]
    with pytest.raises(KeyError, match="was not shipped"):
        shipment.num_shards("val")


def test_an_unknown_transport_is_refused(tmp_path):
    from conftest import REPO

    with pytest.raises(ConfigError, match="data.transport"):
        load_config(REPO / "configs" / "quick.yaml", {"data.transport": "nfs"})
