"""The default config's built-in detector ships inside the package: used where training would have made exactly
it (same cache name, same training data, intact file), and never elsewhere."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from posisp_dist.data.shards import RawDataset
from posisp_dist.tasks import detector, load_task_model, shipped
from posisp_dist.tasks.detector import BuiltinDetector, detector_path

REPO_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "quick.yaml"


class Trained(Exception):
    """Raised by a stand-in for `train_detector`: the model was about to be trained."""


def _no_training(*args, **kwargs):
    raise Trained


@pytest.fixture
def shipped_dir(tmp_path, monkeypatch):
    monkeypatch.setattr(shipped, "SHIPPED_DIR", tmp_path / "weights")
    monkeypatch.setattr(shipped, "MANIFEST", tmp_path / "weights" / "MANIFEST.json")
    monkeypatch.setattr(detector, "train_detector", _no_training)
    return tmp_path / "weights"


def _fresh_cache(tiny_cfg, tmp_path, name):
    return tiny_cfg.task.model_copy(update={"cache_dir": str(tmp_path / name)})


def test_a_shipped_model_is_used_where_training_would_have_made_it_and_only_there(
    tiny_cfg, tiny_data, tiny_task, tmp_path, shipped_dir
):
    train = RawDataset(tiny_data, "train")
    name = detector_path(tiny_cfg.task, train, BuiltinDetector).name
    info = {"train_seconds": 1.0, "final_loss": 0.5, "classes": train.classes}
    shipped.ship(name, tiny_task.net.state_dict(), train, info)

    task_cfg = _fresh_cache(tiny_cfg, tmp_path, "models")
    model = load_task_model(task_cfg, tiny_data, progress=False, device="cpu")  # no training (it would raise)
    assert model.fingerprint() == tiny_task.fingerprint()  # the very weights
    cached = detector_path(task_cfg, train, BuiltinDetector)
    assert "shipped with posisp-dist" in json.loads(cached.with_suffix(".json").read_text())["source"]

    manifest = json.loads(shipped.MANIFEST.read_text())
    manifest[name]["train_data_sha256"] = "0" * 64  # trained on other data (another library's generator, say)
    shipped.MANIFEST.write_text(json.dumps(manifest))
    with pytest.raises(Trained):
        load_task_model(_fresh_cache(tiny_cfg, tmp_path, "models2"), tiny_data, progress=False, device="cpu")

    shipped.ship(name, tiny_task.net.state_dict(), train, info)
    (shipped_dir / name).write_bytes((shipped_dir / name).read_bytes()[:-10])  # damaged
    with pytest.raises(Trained):
        load_task_model(_fresh_cache(tiny_cfg, tmp_path, "models3"), tiny_data, progress=False, device="cpu")

    other = tiny_cfg.task.model_copy(update={"cache_dir": str(tmp_path / "models4"),
                                             "train": tiny_cfg.task.train.model_copy(update={"steps": 61})})
    with pytest.raises(Trained):  # another training config: another cache name, nothing shipped for it
        load_task_model(other, tiny_data, progress=False, device="cpu")


@pytest.mark.slow
def test_the_shipped_detector_is_the_default_configs_model_trained_on_its_data(tmp_path):
    """Fails when the default config, the data generator or the training changed: rerun the command it names."""
    from posisp_dist.config import load_config
    from posisp_dist.data.build import build_dataset

    cfg = load_config(REPO_CONFIG, {"data.root": str(tmp_path / "data")})
    build_dataset(cfg.data, cfg.seed, progress=False)
    train = RawDataset(cfg.data.root, "train")
    path = detector_path(cfg.task, train, BuiltinDetector)
    found = shipped.shipped_for(path, train)
    assert found is not None, f"{path.name} is not shipped or went stale: run `{shipped.COMMAND}`"
    assert found.stat().st_size < 4e6  # a few MB at most inside the package


def test_retraining_ships_the_cached_models_weights_and_a_check_finds_them_identical(
    tiny_cfg, tiny_data, tiny_task, tmp_path, monkeypatch
):
    import torch

    monkeypatch.setattr(shipped, "SHIPPED_DIR", tmp_path / "weights")
    monkeypatch.setattr(shipped, "MANIFEST", tmp_path / "weights" / "MANIFEST.json")
    train = RawDataset(tiny_data, "train")
    path, _ = shipped.retrain(tiny_cfg.task, train)
    assert path.name in json.loads(shipped.MANIFEST.read_text())
    state = torch.load(path, weights_only=True)  # training is deterministic: the cache's model, tensor by tensor
    assert all(torch.equal(state[k], v) for k, v in tiny_task.net.state_dict().items())
    assert shipped.retrain(tiny_cfg.task, train, check=True) == (path, True)
    with pytest.raises(ValueError, match="ultralytics"):
        shipped.retrain(tiny_cfg.task.model_copy(update={"kind": "ultralytics"}), train)
