"""The catalogue: the paper's ten first and unchanged, extension files found and checked, the default path free of
them, and an opted-in extension growing the action space by exactly its own size."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import gymnasium as gym
import pytest
from conftest import REPO

import envs  # noqa: F401  (registers the ids)
from envs.sequence_isp import sequence_action_space
from posisp_dist.config import Config, ISPConfig, load_config
from posisp_dist.isp.catalogue import catalogue, catalogue_of, discover, extra_names, registry_for
from posisp_dist.isp.registry import DEFAULT_MODULES
from posisp_dist.isp.registry import DEFAULT_REGISTRY as R

EXTRAS = list(extra_names())


def test_the_catalogue_is_the_paper_s_ten_then_the_extensions():
    cat = catalogue()
    assert cat.modules[: R.n_modules] == DEFAULT_MODULES and all(
        a is b for a, b in zip(cat.modules, DEFAULT_MODULES, strict=False)
    )
    assert cat.names[R.n_modules :] == tuple(EXTRAS) and EXTRAS, "the worked example lives in isp/extra/"
    assert all(cat.modules[cat.index(n)].twin is not None for n in EXTRAS)


# the shipped configs that opt in to an extension, and what they add to the paper's ten (README "Result: an
# ultralytics YOLO": that YOLO reads colour, and the raw's colour cast is beyond the paper's white balance)
OPTED_IN = {"quick-yolo.yaml": ("grey_world",), "quick-yolo-seg.yaml": ("grey_world",)}


def test_the_default_modules_are_the_paper_s_and_every_other_shipped_config_keeps_them():
    assert ISPConfig().modules == R.names
    assert registry_for(R.names) == R
    for path in sorted((REPO / "configs").glob("*.yaml")):
        if not path.name.startswith("compare"):
            extra = OPTED_IN.get(path.name, ())
            assert load_config(path).isp.modules == (*R.names, *extra), path.name


def test_the_default_path_imports_no_extension_and_no_torch():
    code = textwrap.dedent("""
        import sys
        from posisp_dist.config import ISPConfig
        from posisp_dist.isp.catalogue import registry_for
        assert registry_for(ISPConfig().modules).n_modules == 10
        print(sorted(m for m in sys.modules if m.startswith("posisp_dist.isp.extra.") or m == "torch"))
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"


@pytest.mark.parametrize("name", EXTRAS)
def test_an_opted_in_extension_grows_the_action_space_by_its_own_size(name, tiny_cfg):
    raw = tiny_cfg.model_dump(mode="json")
    raw["isp"]["modules"] = [*R.names, name]
    cfg = Config.model_validate(raw)
    spec = catalogue().modules[catalogue().index(name)]
    env = gym.make("posisp/SequenceISP-v0", config=cfg)  # built lazily: data and task come at the first reset
    L = cfg.isp.max_len
    assert env.action_space == sequence_action_space(R.n_modules + 1, L, R.n_params + spec.n_params)
    default = gym.make("posisp/SequenceISP-v0", config=tiny_cfg)
    assert default.action_space == sequence_action_space(R.n_modules, L, R.n_params)
    assert env.unwrapped.source.registry.names == (*R.names, name)


def test_config_accepts_catalogue_names_and_names_the_known_ones_for_an_unknown(tmp_path):
    for name in EXTRAS:
        assert ISPConfig(modules=("exposure", name)).modules == ("exposure", name)
    with pytest.raises(KeyError, match="vignette.*white_balance" + "".join(f".*{n}" for n in EXTRAS)):
        ISPConfig(modules=("exposure", "vignette"))


def _package(root, name: str, files: dict[str, str]) -> str:
    pkg = root / name
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    for file, body in files.items():
        (pkg / f"{file}.py").write_text(textwrap.dedent(body))
    return name


MODULE = """
    from posisp_dist.isp.registry import module_spec

    def {name}(img, params, xp):
        \"\"\"Scale by k.\"\"\"
        return xp.clip(img * params[:, 0][:, None, None, None], 0.0, 1.0)

    SPEC = module_spec("{name}", {name}, [("k", 0.5, 2.0, "gain", 1.0)], 1.0, twin={twin})
"""


def test_discovery_finds_each_file_s_spec_in_file_name_order(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    files = {n: MODULE.format(name=n, twin="lambda x, p: x") for n in ("zoom", "boost")} | {"_helpers": "X = 1\n"}
    pkg = _package(tmp_path, "extras_found", files)
    assert [s.name for s in discover(pkg)] == ["boost", "zoom"]
    assert catalogue_of(pkg).names == (*R.names, "boost", "zoom")


@pytest.mark.parametrize(
    "body, error, match",
    [
        ("X = 1\n", TypeError, r"extras_bad_\d\.mod must define SPEC"),
        (MODULE.format(name="lonely", twin="None"), TypeError, "'lonely'.* no torch twin"),
        (MODULE.format(name="gamma", twin="lambda x, p: x"), ValueError, "duplicate module names"),
    ],
)
def test_a_broken_extension_file_is_named(tmp_path, monkeypatch, body, error, match, request):
    monkeypatch.syspath_prepend(str(tmp_path))
    pkg = _package(tmp_path, f"extras_bad_{request.node.callspec.indices['body']}", {"mod": body})
    with pytest.raises(error, match=match):
        catalogue_of(pkg)
