"""Cluster YAMLs pass Ray 2.60's own launcher checks (and broken ones do not), `configs/gpu.yaml` fits the
cloud cluster it targets, and the local fake-multinode setup really adds a worker node when EnvRunner-shaped
actors ask for more CPUs than the head holds."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from ray_head import RayHead, cluster_env, driver_result

from posisp_dist.cluster import ClusterConfigError, validate_cluster_yaml
from posisp_dist.config import load_config

REPO = Path(__file__).resolve().parents[1]
CLUSTER_YAMLS = sorted((REPO / "cluster").glob("*.yaml"))


def test_there_is_a_cloud_an_onprem_and_a_local_autoscaling_cluster():
    assert {p.name for p in CLUSTER_YAMLS} >= {"aws-gpu.yaml", "onprem.yaml", "local-autoscale.yaml"}


@pytest.mark.parametrize("path", CLUSTER_YAMLS, ids=[p.name for p in CLUSTER_YAMLS])
def test_every_cluster_yaml_passes_rays_launcher_checks(path):
    config = validate_cluster_yaml(path)
    assert config["head_node_type"] in config["available_node_types"]


def _broken(tmp_path: Path, name: str, mutate) -> Path:
    raw = yaml.safe_load((REPO / "cluster" / name).read_text())
    mutate(raw)
    out = tmp_path / name
    out.write_text(yaml.safe_dump(raw))
    return out


@pytest.mark.parametrize(
    "name, mutate, match",
    [
        ("aws-gpu.yaml", lambda r: r.update(max_worker=3), "max_worker"),  # typo of a top-level key
        ("aws-gpu.yaml", lambda r: r["available_node_types"]["worker.gpu"].pop("resources"), "resources"),
        ("aws-gpu.yaml", lambda r: r["available_node_types"]["worker.gpu"]["resources"].update(GPU=0.5), "integer"),
        ("aws-gpu.yaml", lambda r: r.update(head_node_type="head.missing"), "head_node_type"),
        ("aws-gpu.yaml", lambda r: r["available_node_types"]["worker.gpu"].update(min_workers=9), "max_workers"),
        ("onprem.yaml", lambda r: r["provider"].pop("worker_ips"), "worker_ips"),
        ("local-autoscale.yaml", lambda r: r.pop("cluster_synced_files"), "cluster_synced_files"),
        ("local-autoscale.yaml", lambda r: r["available_node_types"]["ray.worker.cpu"].pop("node_config"), "node"),
    ],
    ids=[
        "typo",
        "no-resources",
        "fractional-gpu",
        "bad-head-type",
        "min-over-max",
        "no-hosts",
        "fake-incomplete",
        "fake-no-node-config",
    ],
)
def test_broken_cluster_yamls_are_rejected_with_the_reason(tmp_path, name, mutate, match):
    with pytest.raises(ClusterConfigError, match=match):
        validate_cluster_yaml(_broken(tmp_path, name, mutate))


def test_unreadable_cluster_yaml_is_a_clear_error(tmp_path):
    (tmp_path / "x.yaml").write_text("provider: [unclosed")
    with pytest.raises(ClusterConfigError, match="x.yaml"):
        validate_cluster_yaml(tmp_path / "x.yaml")


def test_aws_cluster_scales_gpu_workers_from_zero_with_gcs_fault_tolerance():
    config = validate_cluster_yaml(REPO / "cluster" / "aws-gpu.yaml")
    workers = config["available_node_types"]["worker.gpu"]
    assert workers["min_workers"] == 0 and workers["max_workers"] >= 1 and workers["resources"]["GPU"] >= 1
    assert config["available_node_types"]["head.gpu"]["resources"] == {"CPU": 0, "GPU": 0}  # no runners on head
    head_start = " ".join(config["head_start_ray_commands"])
    for needed in ("RAY_REDIS_ADDRESS=", "--redis-password", "RAY_external_storage_namespace=", "POSISP_HOME="):
        assert needed in head_start, needed
    assert any('".[gpu]"' in c for c in config["setup_commands"])  # the CuPy extra
    assert "cluster/redis.env" in config["file_mounts"].values() and "." in config["file_mounts"].values()


def test_gpu_config_fits_the_aws_gpu_workers():
    cfg = load_config(REPO / "configs" / "gpu.yaml")
    worker = validate_cluster_yaml(REPO / "cluster" / "aws-gpu.yaml")["available_node_types"]["worker.gpu"]
    per_node = min(
        worker["resources"]["GPU"] / cfg.train.num_gpus_per_env_runner,
        worker["resources"]["CPU"] / cfg.train.num_cpus_per_env_runner,
    )
    assert cfg.isp.backend == "cupy" and cfg.data.transport == "object_store"
    assert cfg.train.num_gpus_per_env_runner > 0 and cfg.train.num_gpus_per_learner > 0
    assert cfg.train.num_env_runners <= per_node * worker["max_workers"]  # the autoscaler can place them all


AUTOSCALE_DRIVER = """
import json, os, ray
ray.init(address=os.environ["HEAD"])
before = sum(n["Alive"] for n in ray.nodes())

@ray.remote(num_cpus=1)  # the shape of an EnvRunner: one CPU each
class Runner:
    def node(self):
        return ray.get_runtime_context().get_node_id()

runners = [Runner.remote() for _ in range(2)]
nodes = ray.get([r.node.remote() for r in runners], timeout=float(os.environ["WAIT_S"]))
seen = {"before": before, "after": sum(n["Alive"] for n in ray.nodes()), "runner_nodes": nodes,
        "driver_node": ray.get_runtime_context().get_node_id()}
print("POSISP-RESULT", json.dumps(seen))
"""


@pytest.mark.slow
def test_local_autoscaling_adds_a_worker_node_when_envrunners_need_more_cpus(tmp_path):
    raw = yaml.safe_load((REPO / "cluster" / "local-autoscale.yaml").read_text())
    config = tmp_path / "autoscale.yaml"
    head = RayHead(
        num_cpus=raw["available_node_types"]["ray.head.default"]["resources"]["CPU"],
        dashboard=False,
        autoscaling_config=config,
    )
    raw["provider"]["gcs_address"] = head.address  # the fake provider's default is <node ip>:6379
    config.write_text(yaml.safe_dump(raw))
    head.start(env={"RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1"})
    try:
        t0 = time.monotonic()
        out = subprocess.run(
            [sys.executable, "-c", AUTOSCALE_DRIVER], capture_output=True, text=True, timeout=300,
            env={**_env(), "HEAD": head.address, "WAIT_S": "240"},
        )  # fmt: skip
        assert out.returncode == 0, out.stderr[-6000:] + _monitor_log(head)
        seen = driver_result(out.stdout)
    finally:
        head.stop()
    assert seen["before"] == 1  # the head alone: 1 CPU for 2 one-CPU runners
    assert seen["after"] >= 2  # the autoscaler added a fake worker node
    assert set(seen["runner_nodes"]) - {seen["driver_node"]}  # and a runner was placed on it
    print(f"worker node joined and both runners placed in {time.monotonic() - t0:.1f} s")


def _env() -> dict[str, str]:
    return cluster_env()


def _monitor_log(head: RayHead) -> str:
    logs = sorted(head.temp_dir.glob("session_*/logs/monitor.*"))
    return "\n".join(p.read_text()[-2000:] for p in logs)


def test_posisp_cluster_check_reports_ok_and_rejects_broken_yamls(tmp_path, capsys):
    from posisp_dist.cli import main

    assert main(["cluster", "check", *map(str, CLUSTER_YAMLS)]) == 0
    assert capsys.readouterr().out.count(": ok (") == len(CLUSTER_YAMLS)
    broken = _broken(tmp_path, "aws-gpu.yaml", lambda r: r.update(max_worker=3))
    assert main(["cluster", "check", str(broken)]) == 2
    assert "max_worker" in capsys.readouterr().err
