"""`posisp data ingest` on a folder of DNGs made here (two CFA layouts, two bit depths, COCO and VOC
annotations, a corrupt raw, an unannotated one, an unknown class): levels, letterboxed boxes against the
pixels, split checksums, the skip report, and two iterations of `posisp train` with the built-in detector
retrained on the result."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO
from dng_writer import write_dng

from posisp_dist.cli import main
from posisp_dist.config import DataConfig
from posisp_dist.data.build import build_dataset
from posisp_dist.data.readers import read_voc
from posisp_dist.data.shards import SPLITS, RawDataset
from posisp_dist.data.unprocess import xyz2cam_to_cam2rgb

SIZE = 64
CLASSES = ["car", "person"]
LEVELS = {"R": 0.10, "G": 0.15, "B": 0.20}  # background, as a fraction of white - black, per CFA colour
# camera: (CFA, black, white, (H, W), letterbox scale, letterbox offset (ox, oy)); 64/128 = 0.5 and 64/160 = 0.4
CAMERAS = {"a": ("RGGB", 256, 4095, (96, 128), 0.5, (0, 8)), "b": ("BGGR", 512, 16383, (80, 160), 0.4, (0, 16))}


def _mosaic(cam: str, box: tuple[int, int, int, int]) -> np.ndarray:
    cfa, black, white, (h, w), _, _ = CAMERAS[cam]
    frac = np.empty((h, w))
    for pos, c in enumerate(cfa):
        frac[pos // 2 :: 2, pos % 2 :: 2] = LEVELS[c]
    x0, y0, x1, y1 = box
    frac[y0:y1, x0:x1] = 0.8  # the object: bright in every channel
    return np.round(black + frac * (white - black)).astype(np.uint16)


def _box(cam: str, i: int) -> tuple[int, int, int, int]:
    return (16 + 8 * i, 20, 56 + 8 * i, 60) if cam == "a" else (40 + 16 * i, 16, 100 + 16 * i, 56)


def _voc(path: Path, file_name: str, size: tuple[int, int], objects: list[tuple[str, tuple]]) -> None:
    objs = "".join(
        f"<object><name>{n}</name><difficult>0</difficult><bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin>"
        f"<xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>"
        for n, b in objects
    )
    path.write_text(f"<annotation><filename>{file_name}</filename><size><width>{size[0]}</width>"
                    f"<height>{size[1]}</height><depth>3</depth></size>{objs}</annotation>")


def make_folder(tmp: Path) -> dict[str, tuple[str, tuple]]:
    """Raw folder + annotations; returns {file: (camera, box in raw pixels)} of the 8 files that must be kept.

    Camera a: RGGB, 12 bits, COCO boxes in raw pixels. Camera b: BGGR, 14 bits, VOC boxes on a frame twice
    the raw's size (as if drawn on a larger camera JPEG), 1-based."""
    raw, voc = tmp / "raw", tmp / "voc"
    raw.mkdir()
    voc.mkdir()
    good, images, anns = {}, [], []
    for i in range(4):
        for cam in "ab":
            name, box = f"cam_{cam}{i}.dng", _box(cam, i)
            cfa, black, white, (h, w), _, _ = CAMERAS[cam]
            write_dng(raw / name, _mosaic(cam, box), black, white, cfa)
            good[name] = (cam, box)
            label = CLASSES[i % 2]
            if cam == "a":
                images.append({"id": i, "file_name": name, "width": w, "height": h})
                x0, y0, x1, y1 = box
                anns.append({"id": i, "image_id": i, "category_id": 1 + i % 2, "bbox": [x0, y0, x1 - x0, y1 - y0]})
            else:
                doubled = (2 * box[0] + 1, 2 * box[1] + 1, 2 * box[2], 2 * box[3])
                _voc(voc / f"cam_b{i}.xml", name, (2 * w, 2 * h), [(label, doubled)])
    (raw / "broken.dng").write_bytes(b"II*\x00" + b"\x00" * 64)  # a corrupt raw, annotated
    images.append({"id": 9, "file_name": "broken.dng", "width": 128, "height": 96})
    anns.append({"id": 9, "image_id": 9, "category_id": 1, "bbox": [0, 0, 10, 10]})
    for name in ("dragon.dng", "lonely.dng"):  # an unknown class; no annotation at all
        write_dng(raw / name, _mosaic("b", (40, 16, 100, 56)), 512, 16383, "BGGR")
    _voc(voc / "dragon.xml", "dragon.dng", (160, 80), [("dragon", (41, 17, 100, 56))])
    (raw / "notes.txt").write_text("not a raw file")
    cats = [{"id": 1, "name": "car"}, {"id": 2, "name": "person"}]
    (tmp / "coco.json").write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return good


def ingest_args(tmp: Path, root: Path, *extra: str) -> list[str]:
    return ["data", "ingest", "--raw", str(tmp / "raw"), "--root", str(root), "--coco", str(tmp / "coco.json"),
            "--voc", str(tmp / "voc"), "--image-size", str(SIZE), "--classes", *CLASSES, "--shard-size", "3",
            "--quiet", *extra]


@pytest.fixture(scope="module")
def ingested(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("byo")
    good = make_folder(tmp)
    root = tmp / "data"
    args = ingest_args(tmp, root, "--fractions", "0.5", "0.25", "0.25", "--seed", "3", "--json", str(tmp / "r.json"))
    assert main(args) == 0
    return {"tmp": tmp, "root": root, "good": good, "manifest": json.loads((root / "manifest.json").read_text()),
            "report": json.loads((tmp / "r.json").read_text())}


def test_every_skipped_file_is_reported_with_its_reason(ingested):
    skipped = {s["file"]: s["reason"] for s in ingested["report"]["skipped"]}
    assert set(skipped) == {"broken.dng", "dragon.dng", "lonely.dng", "notes.txt"}
    assert skipped["broken.dng"].startswith("unreadable raw: corrupt or unsupported raw file")
    assert skipped["dragon.dng"].startswith("unknown class 'dragon'")
    assert skipped["lonely.dng"] == "no annotation"
    assert "not a raw file" in skipped["notes.txt"]
    assert ingested["manifest"]["skipped"] == ingested["report"]["skipped"]
    assert sum(ingested["report"]["counts"].values()) == 8  # one bad file loses no other


def test_levels_cfa_and_camera_metadata_come_from_each_raw(ingested):
    files, m = ingested["manifest"]["files"], ingested["manifest"]
    assert set(files) == set(ingested["good"]) and m["source"] == "ingested" and m["classes"] == CLASSES
    for name, (cam, _) in ingested["good"].items():
        cfa, black, white, (h, w), _, _ = CAMERAS[cam]
        e = files[name]
        assert (e["cfa"], e["black_level"], e["white_level"], e["raw_size"]) == (cfa, black, white, [w, h])
        assert e["bit_depth"] == (12 if cam == "a" else 14)
        np.testing.assert_allclose(e["wb_gains"], [2.0, 1.0, 1.5], rtol=1e-5)  # 1 / AsShotNeutral
        np.testing.assert_allclose(e["cam2rgb"], xyz2cam_to_cam2rgb(np.eye(3)), atol=1e-5)  # from ColorMatrix1
    assert m["cfa"] == "RGGB" and m["image_size"] == SIZE and "letterbox" in m


def _rows(root: Path) -> dict[int, tuple]:
    out = {}
    for split in SPLITS:
        b = RawDataset(root, split).load()
        for i in range(len(b)):
            out[int(b.ids[i])] = (b.raw[i], b.black_level[i], b.white_level[i], b.boxes[i], b.labels[i], b.srgb[i])
        assert b.cfa == "RGGB" and b.raw.shape[1:] == (SIZE, SIZE)
    return out


def test_letterboxed_pixels_and_boxes_move_together(ingested):
    rows, files = _rows(ingested["root"]), ingested["manifest"]["files"]
    assert len(rows) == 8
    for name, (cam, box) in ingested["good"].items():
        _, black, white, (h, w), scale, (ox, oy) = CAMERAS[cam]
        raw, bl, wl, boxes, labels, srgb = rows[files[name]["id"]]
        assert (bl, wl) == (black, white)
        expected = np.asarray(box, np.float64) * scale + [ox, oy, ox, oy]  # VOC frame of 2x size scaled back first
        np.testing.assert_allclose(boxes, [expected], atol=1e-3)
        assert files[name]["scale"] == [scale, scale] and files[name]["offset"] == [ox, oy]
        assert labels.tolist() == [CLASSES.index(CLASSES[int(name[-5]) % 2])]
        x = (raw.astype(np.float64) - black) / (white - black)
        ys, xs = np.nonzero(x > 0.45)  # the bright object, in the letterboxed mosaic
        np.testing.assert_allclose([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], expected, atol=2)  # a cell
        ch = int(h * scale)
        assert np.all(x[:oy] == 0) and np.all(x[oy + ch :] == 0)  # padding holds the black level
        background = x[oy : oy + ch].copy()
        background[int(expected[1]) - oy - 2 : int(expected[3]) - oy + 2] = np.nan  # keep rows clear of the object
        for (r, c), colour in zip([(0, 0), (0, 1), (1, 0), (1, 1)], "RGGB", strict=True):  # every file re-laid as RGGB
            np.testing.assert_allclose(np.nanmedian(background[r::2, c::2]), LEVELS[colour], atol=2e-3)
        assert srgb[oy : oy + ch].mean() > 0 and srgb[:oy].max() == 0  # LibRaw's render, letterboxed likewise


def test_split_checksums_are_reproducible_and_checkable(ingested, tmp_path):
    tmp, m = ingested["tmp"], ingested["manifest"]
    listed = {s: [e["file"] for e in m["splits"][s]] for s in SPLITS}
    assert sorted(sum(listed.values(), [])) == sorted(ingested["good"]) and m["counts"]["test"] >= 1
    for s in SPLITS:
        for e in m["splits"][s]:
            assert e["sha256"] == hashlib.sha256((tmp / "raw" / e["file"]).read_bytes()).hexdigest()
    assert m["split_method"] == {"mode": "drawn", "seed": 3, "fractions": [0.5, 0.25, 0.25]}
    again = tmp_path / "again"
    assert main(ingest_args(tmp, again, "--fractions", "0.5", "0.25", "0.25", "--seed", "3")) == 0
    m2 = json.loads((again / "manifest.json").read_text())
    assert (m2["split_digests"], m2["fingerprint"]) == (m["split_digests"], m["fingerprint"])
    assert main(["data", "verify", "--root", str(ingested["root"]), "--raw", str(tmp / "raw")]) == 0
    changed = tmp_path / "raw"
    shutil.copytree(tmp / "raw", changed)
    victim = m["splits"]["train"][0]["file"]
    with open(changed / victim, "ab") as f:
        f.write(b"\x00")
    assert main(["data", "verify", "--root", str(ingested["root"]), "--raw", str(changed)]) == 1


def test_given_split_lists_are_followed_and_unlisted_files_reported(ingested, tmp_path, capsys):
    tmp, names = ingested["tmp"], sorted(ingested["good"])
    lists = {"train": names[:4], "val": names[4:6], "test": names[6:7] + ["ghost.dng"]}
    args = []
    for split, items in lists.items():
        (tmp_path / f"{split}.txt").write_text("# one name a line\n" + "\n".join(items) + "\n")
        args += ["--split", f"{split}={tmp_path / f'{split}.txt'}"]
    assert main(ingest_args(tmp, tmp_path / "given", *args)) == 0
    m = json.loads((tmp_path / "given" / "manifest.json").read_text())
    assert {s: [e["file"] for e in m["splits"][s]] for s in SPLITS} == {**lists, "test": names[6:7]}
    reasons = {s["file"]: s["reason"] for s in m["skipped"]}
    assert reasons[Path(names[7]).stem] == "in no split list" and "ghost" in reasons
    assert m["split_method"]["mode"] == "given"
    capsys.readouterr()
    assert main(ingest_args(tmp, tmp_path / "given", *args)) == 2  # a dataset is there: --force replaces it
    assert "--force" in capsys.readouterr().err


def test_ingested_root_is_reused_never_rebuilt_over(ingested, tmp_path):
    root = ingested["root"]
    with pytest.raises(ValueError, match="holds ingested data but data.source is builtin"):
        build_dataset(DataConfig(root=str(root)), progress=False)
    assert build_dataset(DataConfig(root=str(root), source="ingested"), progress=False) == root
    assert json.loads((root / "manifest.json").read_text())["fingerprint"] == ingested["manifest"]["fingerprint"]
    with pytest.raises(FileNotFoundError, match="posisp data ingest"):
        build_dataset(DataConfig(root=str(tmp_path / "none"), source="ingested"), progress=False)


def test_bad_inputs_are_clear_errors(tmp_path, capsys):
    (tmp_path / "raw").mkdir()
    assert main(["data", "ingest", "--raw", str(tmp_path / "raw"), "--root", str(tmp_path / "o")]) == 2
    assert "needs annotations" in capsys.readouterr().err
    (tmp_path / "bad.xml").write_text("<annotation><object><name>car</name></object></annotation>")
    with pytest.raises(ValueError, match="bad.xml: object 0 .car. has no numeric <bndbox>"):
        read_voc(tmp_path / "bad.xml")
    assert main(["data", "ingest", "--raw", str(tmp_path / "nowhere"), "--root", str(tmp_path / "o"),
                 "--coco", "x.json"]) == 2
    assert "raw folder not found" in capsys.readouterr().err


@pytest.mark.slow
def test_train_two_iterations_on_ingested_data_with_the_builtin_detector(ingested, ray_local, tmp_path):
    from posisp_dist.config import load_config
    from posisp_dist.tasks.detector import detector_path

    sets = {
        "data.root": ingested["root"], "task.cache_dir": tmp_path / "models", "task.train.steps": 20,
        "task.train.width": 8, "task.train.batch_size": 8, "task.batch_size": 8, "env.preview_size": 16,
        "env.num_envs_per_runner": 4, "ppo.train_batch_size": 8, "ppo.minibatch_size": 8, "ppo.num_epochs": 1,
        "train.iterations": 2, "train.num_env_runners": 0, "train.val_every": 0, "train.checkpoint_every": 1,
        "train.grid_images": 2, "train.out_dir": tmp_path / "runs",
    }
    args = ["train", "--config", str(REPO / "configs" / "byo-example.yaml"), "--quiet", "--json",
            str(tmp_path / "s.json"), "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"]
    for k, v in sets.items():
        args += ["--set", f"{k}={v}"]
    assert main(args) == 0
    summary = json.loads((tmp_path / "s.json").read_text())
    assert summary["iterations"] == 2 and summary["env_steps"] == 16
    cfg = load_config(REPO / "configs" / "byo-example.yaml", {k: str(v) if isinstance(v, Path) else v
                                                               for k, v in sets.items()})
    trained = detector_path(cfg.task, RawDataset(ingested["root"], "train"))  # keyed by the ingested data
    assert trained.exists() and json.loads(trained.with_suffix(".json").read_text())["classes"] == CLASSES
    assert json.loads((ingested["root"] / "manifest.json").read_text())["source"] == "ingested"  # not rebuilt


def _digest(root: Path) -> dict[str, str]:
    import hashlib

    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_a_failed_forced_ingest_keeps_the_previous_dataset_whole(ingested, tmp_path, capsys):
    """`--force` with a test list whose only name is unknown fails after train and val were read: the dataset
    that was there stays byte for byte, and no partial root or sibling is left."""
    import shutil

    tmp, names = ingested["tmp"], sorted(ingested["good"])
    root = tmp_path / "data"
    shutil.copytree(ingested["root"], root)
    before = _digest(root)
    lists = {"train": names[:4], "val": names[4:6], "test": ["ghost.dng"]}
    args = []
    for split, items in lists.items():
        (tmp_path / f"{split}.txt").write_text("\n".join(items) + "\n")
        args += ["--split", f"{split}={tmp_path / f'{split}.txt'}"]
    capsys.readouterr()
    assert main(ingest_args(tmp, root, *args, "--force")) == 2
    assert "no images left in split(s) test" in capsys.readouterr().err
    assert _digest(root) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "test.txt", "train.txt", "val.txt"]
    fresh = tmp_path / "new"  # the same failure on a new root leaves no root at all
    assert main(ingest_args(tmp, fresh, *args)) == 2 and not fresh.exists()
    assert main(ingest_args(tmp, root, "--force", "--fractions", "0.5", "0.25", "0.25")) == 0  # and it replaces
    assert _digest(root) != before


def test_verify_reports_a_raw_that_became_a_folder(ingested, tmp_path, capsys):
    raw = tmp_path / "raw"
    shutil.copytree(ingested["tmp"] / "raw", raw)
    victim = ingested["manifest"]["splits"]["train"][0]["file"]
    (raw / victim).unlink()
    (raw / victim).mkdir()
    capsys.readouterr()
    assert main(["data", "verify", "--root", str(ingested["root"]), "--raw", str(raw)]) == 1
    out = capsys.readouterr()
    assert f"{victim} in {raw} is no longer a file" in out.out + out.err and "Traceback" not in out.err


def test_boxes_outside_the_frame_or_not_finite_skip_the_file_by_name():
    from posisp_dist.data.ingest import Annotation, SkipFile, _check_boxes

    inside = Annotation(["car"], np.array([[10, 10, 20, 20]], np.float32), None, "coco.json")
    _check_boxes(inside, (64, 48))
    outside = Annotation(["car", "car"], np.array([[10, 10, 20, 20], [70, 5, 90, 30]], np.float32), None, "x.xml")
    with pytest.raises(SkipFile, match="1 box.es. lie wholly outside the 64x48 frame .x.xml."):
        _check_boxes(outside, (64, 48))
    framed = Annotation(["car"], np.array([[100, 10, 120, 20]], np.float32), (128, 96), "x.xml")
    _check_boxes(framed, (64, 48))  # inside its own (larger) annotation frame
    with pytest.raises(SkipFile, match="non-finite box coordinates"):
        _check_boxes(Annotation(["car"], np.array([[0, 0, np.inf, 4]], np.float32), None, "v.xml"), (64, 48))
