"""Shared fixtures: array namespaces, and a tiny dataset + detector made once per session for 2-core CI."""

from __future__ import annotations

import os
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))  # test helpers such as dng_writer

from posisp_dist.config import Config, load_config  # noqa: E402
from posisp_dist.isp.xp import cupy_available  # noqa: E402

XPS = ["numpy"] + (["cupy"] if cupy_available() else [])
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(params=XPS)
def xp(request):
    """NumPy always; CuPy too when a GPU is visible."""
    if request.param == "cupy":
        import cupy

        return cupy
    return np


def tiny_overrides(tmp: Path) -> dict:
    """Shrink configs/quick.yaml to seconds on 2 CPU cores."""
    return {
        "data.root": str(tmp / "data"),
        "data.image_size": 64,
        "data.n_train": 96,
        "data.n_val": 24,
        "data.n_test": 24,
        "data.shard_size": 24,
        "data.object_size": [12, 28],
        "data.objects_per_image": [1, 2],
        "task.cache_dir": str(tmp / "models"),
        "task.train.steps": 60,
        "task.train.width": 8,
        "task.train.batch_size": 16,
        "task.batch_size": 32,
        "baselines.n_pipelines": 3,
        "baselines.search_images": 8,
    }


@pytest.fixture(scope="session")
def tiny_cfg(tmp_path_factory) -> Config:
    tmp = tmp_path_factory.mktemp("tiny")
    return load_config(REPO / "configs" / "quick.yaml", tiny_overrides(tmp))


@pytest.fixture(scope="session")
def tiny_data(tiny_cfg):
    from posisp_dist.data.build import build_dataset

    return build_dataset(tiny_cfg.data, tiny_cfg.seed, progress=False)


@pytest.fixture(scope="session")
def tiny_task(tiny_cfg, tiny_data):
    from posisp_dist.tasks import load_task_model

    return load_task_model(tiny_cfg.task, tiny_data, progress=False, device="cpu")


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray instance (2 CPUs) shared by every test that trains."""
    import ray

    from posisp_dist.train.ray_local import start_local_ray

    if not ray.is_initialized():  # loopback only, as the product's own local Ray
        start_local_ray(num_cpus=2)
    yield ray
    ray.shutdown()


def with_task(section: dict, task: dict) -> dict:
    """A task section with `task`'s fields set; a new `kind` keeps only the fields that kind's config has."""
    from posisp_dist.config import task_fields

    return {**task_fields(section, task.get("kind", section["kind"])), **task}


def tiny_train_yaml(tiny_cfg: Config, tmp: Path, task: dict) -> tuple[Path, str]:
    """A two-iteration, in-process (no EnvRunner actor) training config of the tiny data with `task` fields
    replaced, val-scored every iteration -> (its YAML path, its MLflow URI)."""
    import yaml

    raw = tiny_cfg.model_dump(mode="json")
    raw["task"] = with_task(raw["task"], task)
    raw["env"].update(preview_size=16, num_envs_per_runner=16)
    raw["ppo"].update(train_batch_size=32, minibatch_size=32, num_epochs=1)
    raw["train"].update(iterations=2, num_env_runners=0, val_every=1, grid_images=2, out_dir=str(tmp / "runs"))
    raw["tracking"]["uri"] = uri = f"sqlite:///{tmp / 'mlflow.db'}"
    path = tmp / "two-iterations.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path, uri


def no_network_script(tmp: Path) -> Path:
    """A sitecustomize that fails and records any socket connection or name lookup of the process."""
    guard = tmp / "guard"
    guard.mkdir(exist_ok=True)
    (guard / "sitecustomize.py").write_text(textwrap.dedent(f"""
        import socket
        def _refuse(*a, **k):
            with open({str(tmp / 'attempts.txt')!r}, 'a') as f:
                f.write(repr(a[:2]) + '\\n')
            raise OSError('network refused by the test guard')
        socket.socket.connect = socket.socket.connect_ex = _refuse
        socket.create_connection = socket.getaddrinfo = socket.gethostbyname = _refuse
    """))
    return guard


def run_guarded_pathwise(tmp: Path, config_class: str, task: dict, data: Path, images: int,
                         env: dict[str, str], timeout: float) -> str:
    """In a fresh process under the no-network guard: build the task model from `task` (a `config_class` section)
    through the registry, run its pathwise call (loss, backward to the images) and its evaluation on `images` val
    images; -> its stdout (it prints its torch thread count). Fails naming what the process printed or tried."""
    import subprocess

    script = tmp / "run.py"
    script.write_text(textwrap.dedent(f"""
        import torch, numpy as np
        from posisp_dist.config import {config_class}
        from posisp_dist.data.shards import RawDataset
        from posisp_dist.tasks import load_task_model
        cfg = {config_class}.model_validate({task!r})
        model = load_task_model(cfg, {str(data)!r}, progress=False, device="cpu")
        b = RawDataset({str(data)!r}, "val").load(limit={images})
        x = torch.from_numpy(b.srgb.astype(np.float32) / 255).permute(0, 3, 1, 2).contiguous().requires_grad_(True)
        loss, score = model.loss_and_score(x, b.targets)
        loss.sum().backward()
        model.evaluate(x.detach().permute(0, 2, 3, 1).numpy(), b.targets)
        print("threads", torch.get_num_threads())
    """))
    env = {**env, "PYTHONPATH": f"{no_network_script(tmp)}{os.pathsep}{REPO}", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr[-3000:]
    assert not (tmp / "attempts.txt").exists(), (tmp / "attempts.txt").read_text()
    return done.stdout


def config_with_task(tiny_cfg: Config, task: dict) -> Config:
    """The tiny config with another task section."""
    raw = tiny_cfg.model_dump(mode="json")
    raw["task"] = with_task(raw["task"], task)
    return Config.model_validate(raw)


def two_runner_yaml(tiny_cfg: Config, tmp: Path, task: dict) -> tuple[Path, str]:
    """`tiny_train_yaml` with two EnvRunners and the task model shipped through the object store."""
    import yaml

    path, uri = tiny_train_yaml(tiny_cfg, tmp, task)
    raw = yaml.safe_load(path.read_text())
    raw["train"]["num_env_runners"] = 2
    raw["data"]["transport"] = "object_store"
    path.write_text(yaml.safe_dump(raw))
    return path, uri
