"""Configs load into the schema; broken configs fail clearly; the CLI commands work end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from conftest import REPO, tiny_overrides

from posisp_dist.cli import main
from posisp_dist.config import ConfigError, flatten, load_config

CONFIGS = sorted(p for p in (REPO / "configs").glob("*.yaml") if not p.name.startswith("compare"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_every_config_loads(path):
    cfg = load_config(path)
    flat = flatten(cfg)
    assert flat["data.image_size"] == cfg.data.image_size and flat["task.kind"] == cfg.task.kind


@pytest.mark.parametrize(
    "text, match",
    [
        ("data: {image_size: 'big'}", "image_size"),
        ("data: {colour: 3}", "colour"),
        ("isp: {modules: [exposure, vignette]}", "vignette"),
        ("task: {kind: yolo9000}", "unknown task kind"),
        ("task: {kind: torchvision}", "torchvision needs `builder`"),
        ("data: [1, 2", "not valid YAML"),
        ("- just a list", "mapping"),
        ("isp: {modules: []}", "isp.modules"),
        ("isp: {modules: [gamma, exposure, gamma]}", "isp.modules names \\['gamma'\\] more than once"),
        ("data: {classes: []}", "data.classes"),
        ("data: {classes: [disc, disc]}", "data.classes names"),
        ("isp: {backend: tpu}", "'numpy', 'cupy' or 'auto'"),
        ("env: {kind: hybrid}", "'sequence' or 'stepwise'"),
        ("data: {transport: carrier_pigeon}", "'filesystem' or 'object_store'"),
    ],
)
def test_broken_configs_name_the_cause(tmp_path, text, match):
    p = tmp_path / "bad.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError, match=match):
        load_config(p)


@pytest.mark.parametrize(
    "key", ["env.cost_lambda", "ppo.lr", "ppo.grad_clip", "task.loss_clip", "train.time_budget_s", "env.reuse_penalty"]
)
@pytest.mark.parametrize("value", [".inf", "-.inf", ".nan"])
def test_non_finite_floats_are_refused_in_every_float_field(tmp_path, key, value):
    section, field = key.split(".")
    p = tmp_path / "bad.yaml"
    p.write_text(f"{section}: {{{field}: {value}}}")
    with pytest.raises(ConfigError, match=rf"{section}\.([a-z_]+\.)?{field}"):  # task.<its kind>.loss_clip
        load_config(p)


def test_a_directory_config_and_a_set_below_a_value_are_one_line_errors(tmp_path, capsys):
    assert main(["train", "--config", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "is a directory" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    cfg = REPO / "configs" / "quick.yaml"
    assert main(["train", "--config", str(cfg), "--set", "data.root.x=1"]) == 2
    err = capsys.readouterr().err
    assert "data.root is a value" in err and len(err.strip().splitlines()) == 1


def test_missing_config_file(tmp_path, capsys):
    assert main(["baselines", "--config", str(tmp_path / "nope.yaml")]) == 2
    assert "config file not found" in capsys.readouterr().err


def _tiny_yaml(tmp_path: Path) -> Path:
    raw = yaml.safe_load((REPO / "configs" / "quick.yaml").read_text())
    for dotted, value in tiny_overrides(tmp_path).items():
        node = raw
        *parents, leaf = dotted.split(".")
        for k in parents:
            node = node.setdefault(k, {})
        node[leaf] = value
    p = tmp_path / "tiny.yaml"
    p.write_text(yaml.safe_dump(raw))
    return p


@pytest.mark.slow
def test_cli_data_build_and_baselines(tmp_path, capsys):
    cfg = _tiny_yaml(tmp_path)
    assert main(["data", "build", "--config", str(cfg), "--quiet"]) == 0
    assert (tmp_path / "data" / "manifest.json").exists()
    out = tmp_path / "rows.json"
    assert main(["baselines", "--config", str(cfg), "--split", "test", "--json", str(out), "--quiet"]) == 0
    rows = {r["method"]: r for r in json.loads(out.read_text())["rows"]}
    assert set(rows) == {"clean_srgb", "input_raw", "camera_isp", "random_search"}
    assert all(0.0 <= r["map"] <= r["map50"] <= 100.0 for r in rows.values())
    assert rows["clean_srgb"]["score"] > rows["input_raw"]["score"]
    assert 1 <= len(rows["random_search"]["pipeline"]["modules"]) <= 5
    assert "| random_search |" in capsys.readouterr().out


def test_cli_bench_isp(tmp_path):
    out = tmp_path / "bench.json"
    assert main(["bench", "isp", "--sizes", "32", "--batch", "2", "--min-time", "0", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    ops = {r["op"] for r in rows}
    assert {"memcpy", "full_pipeline", "denoise", "exposure"} <= ops
    assert all(r["images_per_s"] > 0 for r in rows)
    assert all("fraction_of_memcpy" in r for r in rows if r["op"] == "exposure")


def test_readme_module_table_matches_the_catalogue():
    """The README's table is the generated one (regenerate: python -m posisp_dist.isp.catalogue README.md)."""
    from posisp_dist.isp.catalogue import extra_names, markdown_table, readme_with_table

    text = (REPO / "README.md").read_text()
    assert readme_with_table(text) == text and markdown_table() in text
    for name in extra_names():
        assert f"| opt-in | {name} |" in text
    with pytest.raises(ValueError, match="markers"):
        readme_with_table("no table here")


def test_every_command_of_the_table_parses_its_help_and_its_shared_options(capsys):
    """The CLI is the `COMMANDS` table: each row is a sub-command with its help; an option shared by several
    commands (--quiet, --json, --config, --set, --tracking-uri) means the same everywhere."""
    from posisp_dist.cli import COMMANDS, build_parser

    parser = build_parser()
    shared: dict[str, set[str]] = {}
    for words, _, _, options in COMMANDS:
        with pytest.raises(SystemExit) as done:
            parser.parse_args([*words.split(), "--help"])
        assert done.value.code == 0 and words.split()[-1] in capsys.readouterr().out
        for flags, kwargs in options:
            shared.setdefault(flags[-1], set()).add(repr(sorted((k, str(v)) for k, v in kwargs.items())))
    assert len(shared["--quiet"]) == 1 and len(shared["--set"]) == 1 and len(shared["--tracking-uri"]) == 1
    assert {"bench scaling", "bench signal"} <= {w for w, *_ in COMMANDS}  # no second argparse main elsewhere


def test_bench_scaling_refuses_runner_counts_without_one(capsys):
    assert main(["bench", "scaling", "--runners", "2", "4"]) == 2
    assert "--runners must include 1" in capsys.readouterr().err
