"""The shared score cache against a real redis-server: a second worker or job reads reference scores
instead of scoring, corrupt values are misses, and Redis dying (at start, between calls or in the middle
of one) costs one warning naming the URL and a recomputation, never a wrong reward."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import redis
from ray_head import driver_result
from redis_server import RedisServer, free_port

from envs.core import ISPTaskCore
from posisp_dist.cache import (
    LocalCache,
    RedisCache,
    ScoreCacheWarning,
    cached_json,
    open_cache,
    reference_namespace,
    reset_open_caches,
)
from posisp_dist.cache.score_cache import decode_float, decode_json, encode_float, encode_json
from posisp_dist.config import CacheConfig, Config
from posisp_dist.data.shards import RawDataset
from posisp_dist.isp.registry import DEFAULT_REGISTRY

REPO = Path(__file__).resolve().parents[1]


class CountingTask:
    """A task model that counts the images it scores and can run a hook (e.g. kill Redis) while scoring."""

    def __init__(self, inner, on_score=None) -> None:
        self.inner, self.on_score, self.images_scored = inner, on_score, 0
        self.classes = inner.classes

    def score(self, images, targets):
        self.images_scored += len(targets)
        if self.on_score:
            self.on_score()
        return self.inner.score(images, targets)

    def fingerprint(self):
        return self.inner.fingerprint()


class Fingerprinted:
    classes: list[str] = []

    def __init__(self, fp: str) -> None:
        self.fp = fp

    def fingerprint(self) -> str:
        return self.fp


@pytest.fixture
def redis_server(tmp_path):
    server = RedisServer(tmp_path)
    yield server
    server.kill()


@pytest.fixture(scope="module")
def val(tiny_cfg, tiny_data):
    ds = RawDataset(tiny_cfg.data.root, "val")
    return ds, ds.load()


def make_core(batch, task, cache, ns):
    return ISPTaskCore(batch, task, DEFAULT_REGISTRY, np, 16, 0.0, True, cache, ns)


def cache_warnings(record) -> list[str]:
    return [str(w.message) for w in record if issubclass(w.category, ScoreCacheWarning)]


def some_actions(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    tokens = np.full((n, 3), DEFAULT_REGISTRY.n_modules)
    tokens[:, :2] = [DEFAULT_REGISTRY.index("exposure"), DEFAULT_REGISTRY.index("gamma")]
    return tokens, rng.random((n, DEFAULT_REGISTRY.n_params)).astype(np.float32)


def test_stored_values_carry_a_checksum_and_bad_ones_are_misses():
    raw = encode_float(-3.25)
    assert decode_float(raw) == -3.25 and decode_float(None) is None
    flipped = raw[:4] + bytes([raw[4] ^ 1]) + raw[5:]
    assert decode_float(flipped) is None and decode_float(raw[:-1]) is None and decode_float(b"-3.25") is None
    blob = encode_json({"rows": [1, 2.5, "x"]})
    assert decode_json(blob) == {"rows": [1, 2.5, "x"]}
    assert decode_json(blob[:-1]) is None  # truncated
    assert decode_json(blob[:-2] + b"9]") is None  # same length, other bytes
    assert decode_json(b'{"rows": []}') is None  # not ours


def test_local_cache_counts_hits_and_misses_and_hands_out_copies():
    c = LocalCache()
    c.put_many("ns", {1: 0.5, 2: -1.0})
    assert c.get_many("ns", [1, 2, 3]) == {1: 0.5, 2: -1.0} and (c.hits, c.misses) == (2, 1)
    assert c.get_many("other", [1]) == {}
    c.put_json("k", {"a": [1]})
    got = c.get_json("k")
    got["a"].append(2)
    assert c.get_json("k") == {"a": [1]}
    calls = []
    assert cached_json(c, "k2", lambda: calls.append(1) or {"x": (1, 2)}) == {"x": [1, 2]}
    assert cached_json(c, "k2", lambda: calls.append(1) or {"x": 0}) == {"x": [1, 2]} and calls == [1]


def test_second_worker_reads_reference_scores_from_redis_without_scoring(val, tiny_task, redis_server):
    ds, batch = val
    ns = reference_namespace(ds.fingerprint, "val", tiny_task)
    first = CountingTask(tiny_task)
    a = make_core(batch, first, RedisCache(redis_server.url, LocalCache()), ns)
    assert first.images_scored == a.ref_task_images == len(batch)
    second = CountingTask(tiny_task)
    cache = RedisCache(redis_server.url, LocalCache())  # another process's view: nothing held locally
    b = make_core(batch, second, cache, ns)
    assert second.images_scored == b.ref_task_images == 0
    assert (cache.hits, cache.misses, cache.corrupt) == (len(batch), 0, 0)
    np.testing.assert_array_equal(b.ref_score, a.ref_score)
    np.testing.assert_array_equal(b.ref_score, tiny_task.score(b.images, b.targets))
    tokens, params = some_actions(len(batch))
    idx = np.arange(len(batch))
    np.testing.assert_array_equal(b.evaluate(idx, tokens, params).reward, a.evaluate(idx, tokens, params).reward)
    other = reference_namespace(ds.fingerprint, "val", Fingerprinted("another-model"))
    assert other != ns and cache.get_many(other, batch.ids) == {}  # another task model shares nothing


def test_a_partial_hit_scores_only_the_missing_images(val, tiny_task, redis_server):
    ds, batch = val
    ns = reference_namespace(ds.fingerprint, "val", tiny_task)
    half = batch.take(np.arange(len(batch) // 2))
    make_core(half, tiny_task, RedisCache(redis_server.url, LocalCache()), ns)
    task = CountingTask(tiny_task)
    core = make_core(batch, task, RedisCache(redis_server.url, LocalCache()), ns)
    assert task.images_scored == len(batch) - len(half)
    np.testing.assert_allclose(core.ref_score, tiny_task.score(core.images, core.targets), rtol=1e-6, atol=1e-9)


def test_corrupt_values_in_redis_are_recomputed_not_trusted(val, tiny_task, redis_server):
    ds, batch = val
    ns = reference_namespace(ds.fingerprint, "val", tiny_task)
    make_core(batch, tiny_task, RedisCache(redis_server.url, LocalCache()), ns)
    raw = redis.Redis.from_url(redis_server.url)
    (key,) = raw.keys("posisp:*scores*")
    bad = encode_float(123.0)
    raw.hset(key, str(int(batch.ids[0])), bad[:5] + bytes([bad[5] ^ 0xFF]) + bad[6:])  # one flipped byte
    raw.hset(key, str(int(batch.ids[1])), b"\x01\x00")  # truncated
    task, cache = CountingTask(tiny_task), RedisCache(redis_server.url, LocalCache())
    core = make_core(batch, task, cache, ns)
    assert task.images_scored == 2 and cache.corrupt == 2
    np.testing.assert_allclose(core.ref_score, tiny_task.score(core.images, core.targets), rtol=1e-6, atol=1e-9)
    raw.set("posisp:v1:json:eval-x", encode_json({"map": 1.0})[:-3])
    assert cache.get_json("eval-x") is None and cache.corrupt == 3


def test_redis_dying_mid_run_warns_once_and_rewards_stay_right(val, tiny_task, redis_server):
    ds, batch = val
    ns = reference_namespace(ds.fingerprint, "val", tiny_task)
    a = make_core(batch, tiny_task, RedisCache(redis_server.url, LocalCache()), ns)
    tokens, params = some_actions(len(batch), seed=1)
    idx = np.arange(len(batch))
    want = a.evaluate(idx, tokens, params).reward
    cache = RedisCache(redis_server.url, LocalCache())  # connected while the server lives
    assert cache.client is not None
    task = CountingTask(tiny_task, on_score=redis_server.kill)  # dies between its get_many and its put_many
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        cache.get_many("warm-up", [0])
        core = make_core(batch.take(idx[:4]), task, cache, ns + "-fresh")  # misses, scores, then Redis is gone
        b = make_core(batch, CountingTask(tiny_task), cache, ns)  # Redis gone: recomputed locally
        cache.put_json("k", {"v": 1})
        assert cache.get_json("k") == {"v": 1}  # the in-process cache still serves
    msgs = cache_warnings(record)
    assert len(msgs) == 1 and redis_server.url in msgs[0] and "went away" in msgs[0], msgs
    assert core.ref_task_images == 4 and b.ref_task_images == len(batch)
    np.testing.assert_array_equal(b.ref_score, a.ref_score)
    np.testing.assert_array_equal(b.evaluate(idx, tokens, params).reward, want)


def test_a_hung_redis_costs_one_timeout_then_the_local_cache_serves(redis_server):
    cache = RedisCache(redis_server.url, LocalCache(), timeout_s=0.5)
    cache.put_many("ns", {1: 1.0})
    redis_server.proc.send_signal(signal.SIGSTOP)  # alive but silent, like a network partition
    try:
        with warnings.catch_warnings(record=True) as record:
            warnings.simplefilter("always")
            t0 = time.monotonic()
            assert cache.get_many("ns", [1, 2]) == {1: 1.0}  # 1 from this process, 2 times out
            assert cache.get_many("ns", [3]) == {} and cache.get_json("k") is None  # no second timeout
            elapsed = time.monotonic() - t0
    finally:
        redis_server.proc.send_signal(signal.SIGCONT)
    msgs = cache_warnings(record)
    assert len(msgs) == 1 and "Timeout" in msgs[0] and redis_server.url in msgs[0], msgs
    assert 0.4 < elapsed < 2.0


def test_unreachable_at_start_warns_naming_the_url_and_runs_on_the_local_cache(val, tiny_task):
    port = free_port()
    url = f"redis://:s3cret@127.0.0.1:{port}/0"
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        cache = RedisCache(url, LocalCache(), timeout_s=1.0)
    (msg,) = cache_warnings(record)
    assert "unreachable" in msg and f"redis://:***@127.0.0.1:{port}/0" in msg and "s3cret" not in msg
    ds, batch = val
    ns = reference_namespace(ds.fingerprint, "val", tiny_task)
    first = make_core(batch, tiny_task, cache, ns)
    task = CountingTask(tiny_task)
    again = make_core(batch, task, cache, ns)  # this process still shares its own scores
    assert task.images_scored == 0
    np.testing.assert_array_equal(again.ref_score, first.ref_score)


def test_cache_config_accepts_redis_urls_only():
    for url in ("redis://localhost:6379/0", "rediss://user:pw@cache.example:6380", "unix:///tmp/redis.sock"):
        assert CacheConfig(redis_url=url).redis_url == url
    for url in ("http://localhost:6379", "localhost:6379", "redis://", "unix://"):
        with pytest.raises(ValueError, match="redis_url"):
            CacheConfig(redis_url=url)
    assert Config().cache.redis_url is None
    reset_open_caches()
    assert open_cache(CacheConfig()) is open_cache(CacheConfig())  # one in-process cache per process
    assert isinstance(open_cache(CacheConfig()), LocalCache)


SECOND_JOB = """
import json, sys
from envs.factory import CoreSource
from posisp_dist.config import Config
core = CoreSource(Config.model_validate(json.loads(sys.argv[1])), "val").get()
print("POSISP-RESULT", json.dumps({"ref_task_images": core.ref_task_images, "ref": core.ref_score.tolist()}))
"""


def test_a_second_job_in_another_process_reuses_the_workers_scores(tiny_cfg, tiny_task, redis_server):
    raw = tiny_cfg.model_dump(mode="json")
    raw["cache"]["redis_url"] = redis_server.url
    cfg = Config.model_validate(raw)
    from envs.factory import CoreSource

    reset_open_caches()
    first = CoreSource(cfg, "val").get()
    assert first.ref_task_images == len(first) > 0
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run(
        [sys.executable, "-c", SECOND_JOB, json.dumps(raw)],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=120,
        check=True,
    )
    second = driver_result(out.stdout)
    assert second["ref_task_images"] == 0
    np.testing.assert_array_equal(second["ref"], first.ref_score)
    reset_open_caches()


def test_the_dev_extra_brings_a_redis_server_without_one_on_path(tmp_path, monkeypatch):
    """The README's test command needs no system redis-server: with PATH holding none, the server is found
    (from the dev extra) and answers PING on its own port."""
    from redis_server import find_redis_server

    monkeypatch.setenv("PATH", str(tmp_path))  # an empty folder: no redis-server on PATH
    path = find_redis_server()
    assert path is not None and Path(path).name == "redis-server"
    server = RedisServer(tmp_path)
    try:
        assert redis.Redis.from_url(server.url).ping()
    finally:
        server.kill()


def test_a_task_models_code_is_part_of_its_cache_key(tmp_path, monkeypatch):
    """Two plugin task models with the same weights and settings but different code never share cached scores."""
    import importlib

    from posisp_dist.cache.keys import task_fingerprint

    body = "class Task:\n    def fingerprint(self):\n        return 'same-weights'\n"
    for name, score in (("plugin_a", "0.0"), ("plugin_b", "1.0")):
        (tmp_path / f"{name}.py").write_text(body + f"# scores {score}\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    a, b = (importlib.import_module(n).Task() for n in ("plugin_a", "plugin_b"))
    assert a.fingerprint() == b.fingerprint() and task_fingerprint(a) != task_fingerprint(b)
    assert task_fingerprint(a) == task_fingerprint(importlib.import_module("plugin_a").Task())
