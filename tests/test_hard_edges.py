"""Bad input gets one line naming its cause, and nothing bad is accepted silently (probe findings of the
data-safety issue, one test each)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from posisp_dist.cli import main
from posisp_dist.data.readers import read_coco


def one_line_error(capsys) -> str:
    err = [ln for ln in capsys.readouterr().err.strip().splitlines() if "mlflow.store.db.utils" not in ln]
    assert len(err) == 1 and "Traceback" not in err[0], err
    return err[0]


def coco(tmp_path: Path, annotations=None, top=None) -> Path:
    path = tmp_path / "coco.json"
    body = top if top is not None else {
        "images": [{"id": 1, "file_name": "a.dng", "width": 64, "height": 48}],
        "annotations": annotations, "categories": [{"id": 1, "name": "car"}]}
    path.write_text(json.dumps(body))
    return path


@pytest.mark.parametrize("annotations, match", [
    ([{"id": 7, "image_id": 1, "category_id": 1, "bbox": None}], "annotation 7 needs a 'bbox' of four numbers"),
    ([{"id": 7, "image_id": 1, "category_id": 1}], "annotation 7 needs a 'bbox'"),
    ([{"image_id": 1, "category_id": 1, "bbox": [1, 2]}], "annotation #0 needs a 'bbox'"),
    ([{"id": 8, "image_id": 1, "category_id": 1, "bbox": [0, 0, float("inf"), 4]}], "annotation 8 has a box with a "
     "non-finite number"),
    (["not an object"], "annotation #0 is not an object"),
])
def test_coco_errors_name_the_file_and_the_annotation(tmp_path, annotations, match):
    path = coco(tmp_path, annotations)
    with pytest.raises(ValueError, match=f"{path}: {match}"):
        read_coco(path)


def test_a_coco_file_whose_top_level_is_a_list_is_named(tmp_path):
    path = coco(tmp_path, top=[{"images": []}])
    with pytest.raises(ValueError, match=f"{path}: a COCO file holds an object at the top level, not a list"):
        read_coco(path)
    with pytest.raises(ValueError, match="is a folder, not a COCO JSON file"):
        read_coco(tmp_path)


def test_a_folder_as_split_list_and_a_negative_resume_length_are_one_line_errors(tmp_path, capsys):
    (tmp_path / "raw").mkdir()
    path = coco(tmp_path, [])
    args = ["data", "ingest", "--raw", str(tmp_path / "raw"), "--root", str(tmp_path / "o"), "--coco", str(path)]
    splits = ["--split", f"train={tmp_path}", "--split", f"val={tmp_path}", "--split", f"test={tmp_path}"]
    assert main([*args, *splits, "--quiet"]) == 2
    assert f"split list {tmp_path} is a folder" in one_line_error(capsys)
    with pytest.raises(SystemExit) as exit_:
        main(["train", "--resume", "0" * 32, "--iterations", "-3"])
    assert exit_.value.code == 2 and "must be a positive whole number, got -3" in capsys.readouterr().err


def test_duplicate_yaml_keys_are_refused_with_their_line(tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text("seed: 0\nppo:\n  lr: 0.1\n  clip_coef: 0.2\n  lr: 0.2\n")
    assert main(["data", "build", "--config", str(path)]) == 2
    assert "at line 5, column 3: key 'lr' is given twice (first at line 3)" in one_line_error(capsys)


def test_a_json_path_under_a_file_is_refused_before_any_work(tmp_path, capsys):
    (tmp_path / "f").write_text("x")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"data: {{root: {tmp_path / 'never-built'}}}\n")
    assert main(["train", "--config", str(cfg), "--quiet", "--json", str(tmp_path / "f" / "out.json")]) == 2
    assert f"{tmp_path / 'f'} is a file, not a folder" in one_line_error(capsys)
    assert not (tmp_path / "never-built").exists()  # refused before the dataset was built


def test_a_task_module_that_raises_at_import_is_one_line(tmp_path, capsys, monkeypatch):
    (tmp_path / "broken_task.py").write_text("raise RuntimeError('needs a licence key')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"data: {{root: {tmp_path / 'd'}, n_train: 8, n_val: 4, n_test: 4, image_size: 64, "
                   "object_size: [12, 28]}\ntask: {kind: mine, module: broken_task}\n")
    assert main(["baselines", "--config", str(cfg), "--split", "val", "--quiet"]) == 2
    assert "task.module 'broken_task' failed while importing: RuntimeError: needs a licence key" in \
        one_line_error(capsys)


def test_resume_without_a_tracking_uri_creates_no_store(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("POSISP_HOME", str(tmp_path))
    assert main(["train", "--resume", "0" * 32]) == 2
    assert "no MLflow store at" in one_line_error(capsys)
    assert list(tmp_path.iterdir()) == []  # no empty store left in the working directory
