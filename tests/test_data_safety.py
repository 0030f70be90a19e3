"""Data safety: a dataset root is replaced only when it is ours, and only once the new dataset is complete."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from conftest import REPO, tiny_overrides

from posisp_dist.cli import main
from posisp_dist.config import load_config
from posisp_dist.data import build as build_module
from posisp_dist.data.build import build_dataset


def digest(root: Path) -> dict[str, str]:
    """sha256 of every file under root, by relative path."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def tiny(tmp: Path, root: Path, **more) -> object:
    return load_config(REPO / "configs" / "quick.yaml", {**tiny_overrides(tmp), "data.root": str(root),
                                                         "data.n_train": 24, "data.n_val": 8, "data.n_test": 8,
                                                         "data.shard_size": 8, **more}).data


def test_a_folder_that_is_not_a_dataset_is_never_deleted(tmp_path, capsys):
    user = tmp_path / "d"
    (user / "keep").mkdir(parents=True)
    (user / "keep" / "f").write_text("x")
    before = digest(user)
    with pytest.raises(ValueError, match="holds no posisp dataset"):
        build_dataset(tiny(tmp_path, user), progress=False)
    assert digest(user) == before
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"data: {{root: {user}}}\n")
    assert main(["data", "build", "--config", str(cfg), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "holds no posisp dataset" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert digest(user) == before


def test_the_working_directory_as_data_root_is_refused_untouched(tmp_path, monkeypatch):
    (tmp_path / "notes.txt").write_text("mine")
    monkeypatch.chdir(tmp_path)
    before = digest(tmp_path)
    with pytest.raises(ValueError, match="holds no posisp dataset"):
        build_dataset(tiny(tmp_path / "t", Path(".")), progress=False)
    assert digest(tmp_path) == before


def test_a_file_as_data_root_is_a_one_line_error(tmp_path, capsys):
    f = tmp_path / "root"
    f.write_text("a file")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"data: {{root: {f}}}\n")
    assert main(["data", "build", "--config", str(cfg), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "is a file, not a folder" in err and len(err.strip().splitlines()) == 1 and f.read_text() == "a file"


def test_a_failed_rebuild_leaves_the_previous_dataset_whole(tmp_path, monkeypatch):
    root = tmp_path / "data"
    build_dataset(tiny(tmp_path, root), seed=0, progress=False)
    before = digest(root)
    real = build_module.make_capture

    def failing(cfg, seed, split_id, index):
        if split_id == 1:
            raise OSError("disk full (simulated)")
        return real(cfg, seed, split_id, index)

    monkeypatch.setattr(build_module, "make_capture", failing)
    with pytest.raises(OSError, match="simulated"):
        build_dataset(tiny(tmp_path, root), seed=1, progress=False)  # another seed: a rebuild
    assert digest(root) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["data", "models"] if (tmp_path / "models").exists()
                                                                 else ["data"])  # no partial sibling left behind
    monkeypatch.setattr(build_module, "make_capture", real)
    build_dataset(tiny(tmp_path, root), seed=1, progress=False)  # the rebuild replaces it once complete
    assert digest(root) != before and (root / "manifest.json").exists()


@pytest.mark.slow
def test_a_corrupt_shard_is_one_line_before_ray_starts(tiny_cfg, tiny_data, tmp_path, capfd):
    import shutil

    import yaml

    from posisp_dist.data.shards import RawDataset

    root = tmp_path / "data"
    shutil.copytree(tiny_data, root)
    victim = Path(RawDataset(root, "val").shard_paths[0])
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 3])
    raw = tiny_cfg.model_dump(mode="json")
    raw["data"]["root"] = str(root)
    raw["tracking"]["uri"] = f"sqlite:///{tmp_path / 'mlflow.db'}"
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(raw))
    capfd.readouterr()
    assert main(["train", "--config", str(path), "--quiet"]) == 2
    err = [ln for ln in capfd.readouterr().err.strip().splitlines() if "mlflow.store.db.utils" not in ln]
    assert len(err) == 1 and victim.name in err[0] and "corrupt or unreadable" in err[0], err


def test_a_data_root_that_cannot_be_written_is_a_one_line_error(tmp_path, monkeypatch):
    """(As root, permissions do not stop writes: a read-only filesystem is simulated at the staging folder.)"""
    import errno

    from posisp_dist.data import staging

    real = Path.mkdir

    def read_only(self, *args, **kwargs):
        if ".partial-" in self.name:
            raise OSError(errno.EROFS, "Read-only file system")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(staging.Path, "mkdir", read_only)
    (tmp_path / "ro").mkdir()
    with pytest.raises(ValueError, match="cannot write the dataset beside .*ro: Read-only file system"):
        build_dataset(tiny(tmp_path, tmp_path / "ro"), progress=False)
