"""`posisp eval` of a (checkpoint, split) pair is computed once and then read from the shared cache, by
this job or a later one, and a changed checkpoint or a dead Redis never serves a stale row. The run is a
real MLflow run holding a real policy checkpoint (an untrained `SequencePolicyModule`), so no Ray cluster
is needed."""

from __future__ import annotations

import warnings

import pytest
from ray.rllib.core.rl_module.rl_module import RLModuleSpec
from redis_server import RedisServer

from envs.factory import make_env
from posisp_dist.cache import ScoreCacheWarning, reset_open_caches
from posisp_dist.config import Config
from posisp_dist.policy.rl_module import SequencePolicyModule
from posisp_dist.runs.tracking import Tracker
from posisp_dist.trained import evaluate, inference
from posisp_dist.trained.inference import MODULE_SUBDIR


@pytest.fixture
def redis_server(tmp_path):
    server = RedisServer(tmp_path)
    yield server
    server.kill()


def fake_run(tiny_cfg, tmp, redis_url: str, seed: int = 0) -> tuple[str, str, Config]:
    """An MLflow run with config.json and one local checkpoint of an untrained policy."""
    raw = tiny_cfg.model_dump(mode="json")
    raw["env"]["preview_size"] = 16
    raw["policy"]["param_learning"] = "ppo"  # untrained Beta-head policies: two seeds pick different pipelines
    raw["train"]["out_dir"] = str(tmp / "runs")
    raw["cache"]["redis_url"] = redis_url
    cfg = Config.model_validate(raw)
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    tracker = Tracker(uri, cfg.tracking.experiment)
    run_id = tracker.start(run_name="fake")
    tracker.log_dict(raw, "config.json")
    tracker.end()
    save_policy(cfg, tmp / "runs" / run_id / "checkpoints" / "iter_000001", seed)
    return run_id, uri, cfg


def save_policy(cfg: Config, ckpt, seed: int) -> None:
    import torch

    env = make_env({"config": cfg.model_dump(mode="json")})
    torch.manual_seed(seed)
    spec = RLModuleSpec(
        module_class=SequencePolicyModule,
        observation_space=env.observation_space,
        action_space=env.action_space,
        model_config=cfg.policy.model_dump(),
    )
    spec.build().save_to_path(str(ckpt / MODULE_SUBDIR))


def counting(monkeypatch) -> dict[str, int]:
    """Count calls of the two expensive parts of `posisp eval` (the policy's greedy rollout, the baselines)."""
    from posisp_dist.baselines import table

    calls = {"policy": 0, "baselines": 0}
    real = {"policy": inference.greedy_on_split, "baselines": table.baseline_table}

    def counted(name):
        def fn(*a, **k):
            calls[name] += 1
            return real[name](*a, **k)

        return fn

    monkeypatch.setattr(inference, "greedy_on_split", counted("policy"))
    monkeypatch.setattr(table, "baseline_table", counted("baselines"))
    return calls


@pytest.mark.slow
def test_eval_is_computed_once_per_checkpoint_and_split(tiny_cfg, tiny_task, redis_server, tmp_path, monkeypatch):
    run_id, uri, cfg = fake_run(tiny_cfg, tmp_path, redis_server.url)
    ckpt = tmp_path / "runs" / run_id / "checkpoints" / "iter_000001"
    reset_open_caches()
    evaluate.remember_policy_row(cfg, ckpt, "val", inference.greedy_on_split(cfg, ckpt, "val"))  # training's report
    calls = counting(monkeypatch)
    reset_open_caches()  # `posisp eval` is a later job: nothing in this process, everything in Redis
    first = evaluate.evaluate_run(run_id, "val", uri, progress=False)
    assert calls == {"policy": 0, "baselines": 1}
    reset_open_caches()
    second = evaluate.evaluate_run(run_id, "val", uri, progress=False)
    assert calls == {"policy": 0, "baselines": 1} and second == first
    assert len(second["rows"][-1]["pipelines"]) == cfg.data.n_val

    for _ in range(2):  # another split: computed once
        test = evaluate.evaluate_run(run_id, "test", uri, progress=False, baselines=False)
    assert calls == {"policy": 1, "baselines": 1} and len(test["rows"]) == 1
    save_policy(cfg, tmp_path / "runs" / run_id / "checkpoints" / "iter_000002", seed=1)  # a newer checkpoint
    newer = evaluate.evaluate_run(run_id, "val", uri, progress=False)
    assert calls == {"policy": 2, "baselines": 1}  # the baselines do not depend on it; the policy row does
    assert newer["rows"][-1]["checkpoint"].endswith("iter_000002")
    assert newer["rows"][-1]["pipelines"] != first["rows"][-1]["pipelines"]

    redis_server.kill()
    reset_open_caches()
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        again = evaluate.evaluate_run(run_id, "val", uri, progress=False)
    assert calls == {"policy": 3, "baselines": 2}  # Redis gone: recomputed, the same rows
    assert again["rows"] == newer["rows"]
    (msg,) = [str(w.message) for w in record if w.category is ScoreCacheWarning]
    assert redis_server.url in msg
    reset_open_caches()
