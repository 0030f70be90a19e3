"""Training on a 3-node local Ray cluster (head + 2 worker nodes, `ray.cluster_utils.Cluster`): the EnvRunners
land on different worker nodes, each reads its own disjoint shards, and with `data.transport: object_store`
the shards and the detector weights reach them through Ray's object store, not a shared disk."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from posisp_dist.config import Config

BATCH = 64


def cluster_cfg(tiny_cfg: Config, tmp: Path, **sections: dict) -> Config:
    """The tiny config with 2 EnvRunners that need the worker nodes' `env_runner` resource."""
    raw = tiny_cfg.model_dump(mode="json")
    raw["data"]["transport"] = "object_store"
    raw["env"].update(preview_size=16, num_envs_per_runner=16)
    raw["ppo"].update(train_batch_size=BATCH, minibatch_size=32, num_epochs=1)
    raw["train"].update(
        iterations=2,
        num_env_runners=2,
        env_runner_resources={"env_runner": 1},
        grid_images=2,
        out_dir=str(tmp / "runs"),
    )
    raw["tracking"]["uri"] = f"sqlite:///{tmp / 'mlflow.db'}"
    for section, values in sections.items():
        raw[section].update(values)
    return Config.model_validate(raw)


@pytest.fixture(scope="module")
def cluster(tiny_data, tiny_task):
    from posisp_dist.benchmarks.local_cluster import local_cluster

    with local_cluster(workers=2, cpus_per_worker=1, runner_slots_per_worker=1, head_cpus=1) as c:
        yield c


@pytest.mark.slow
def test_env_runners_on_two_nodes_read_disjoint_shards_through_the_object_store(tiny_cfg, cluster, tmp_path):
    from posisp_dist.data.shards import RawDataset
    from posisp_dist.data.transport import ship
    from posisp_dist.train.algo_config import build_algo_config
    from posisp_dist.train.runners import describe_env_runners

    cfg = cluster_cfg(tiny_cfg, tmp_path)
    shipment = ship(cfg)  # the driver reads the disk once
    # ... and the EnvRunners are told that the data and the detector cache live where nothing exists
    remote = cluster_cfg(
        tiny_cfg,
        tmp_path,
        data={"root": str(tmp_path / "absent-data")},
        task={"cache_dir": str(tmp_path / "absent-models")},
    )
    algo = build_algo_config(remote, shipment).build_algo()
    try:
        results = [algo.train() for _ in range(2)]
        runners = describe_env_runners(algo)
    finally:
        algo.stop()
    assert all(r["env_runners"]["num_env_steps_sampled"] >= BATCH for r in results)
    assert results[-1]["env_runners"]["isp/task_calls"] > 0  # the shipped detector scored pipelines
    assert [r["worker_index"] for r in runners] == [1, 2]
    assert {r["node_id"] for r in runners} == set(cluster.worker_node_ids)  # one per worker node, none on the head
    assert all(r["transport"] == "object_store" and "error" not in r for r in runners)
    n_shards = len(RawDataset(cfg.data.root, "train").shard_paths)
    assert runners[0]["shards"] == list(range(0, n_shards, 2)) and runners[1]["shards"] == list(range(1, n_shards, 2))
    ids = [set(r["image_ids"]) for r in runners]
    assert ids[0] and ids[1] and not ids[0] & ids[1]  # disjoint images
    assert ids[0] | ids[1] == set(RawDataset(cfg.data.root, "train").load().ids.tolist())  # and all of them
    assert not (tmp_path / "absent-data").exists() and not (tmp_path / "absent-models").exists()


@pytest.mark.slow
def test_the_driver_trains_on_the_cluster_and_logs_where_each_env_runner_ran(tiny_cfg, cluster, tmp_path):
    from posisp_dist.runs.tracking import Tracker
    from posisp_dist.train.driver import train

    cfg = cluster_cfg(tiny_cfg, tmp_path)
    summary = train(cfg, progress=False)
    tracker = Tracker(str(cfg.tracking.uri), cfg.tracking.experiment)
    run = tracker.get_run(summary["run_id"])
    assert run.info.status == "FINISHED" and summary["iterations"] == 2
    assert run.data.params["data.transport"] == "object_store"
    assert run.data.tags["posisp.env_runner_nodes"] == "2"
    placement = json.loads(
        Path(tracker.download_artifacts("env_runners.json", tmp_path / "dl", run.info.run_id)).read_text()
    )
    assert {r["node_id"] for r in placement} == set(cluster.worker_node_ids)
    assert [v for _, v in tracker.history("charts/env_runner_restarts", summary["run_id"])] == [0.0, 0.0]
