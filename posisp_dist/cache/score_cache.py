"""A score cache shared by every EnvRunner and job: per-image reference scores and eval results.

Every EnvRunner scores the input-RAW rendering of its images once, and `posisp eval` scores a
(checkpoint, split) pair once. Both are pure functions of keys that name everything they depend on
(`posisp_dist.cache.keys`), so they can be kept and shared. `LocalCache` keeps them in this process (the
embedded default); `RedisCache` shares them through a Redis server (`cache.redis_url`) and, when Redis is
unreachable or goes away, warns once naming the URL and carries on with its local cache: the caller then
recomputes what it misses, so a dead server costs time, never a wrong reward. Values are stored with a
version byte and a checksum, and anything that fails the check is a miss, never a value.
"""

from __future__ import annotations

import hashlib
import json
import struct
import threading
import warnings
import zlib
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from functools import lru_cache
from typing import Any
from urllib.parse import urlsplit, urlunsplit

FLOAT_FORMAT = 1  # version byte of a stored float: bump when the encoding changes
JSON_MAGIC = b"PSJ1"  # version tag of a stored JSON blob
KEY_PREFIX = "posisp:v1:"


class ScoreCacheWarning(RuntimeWarning):
    """The shared cache is unreachable or went away; the run goes on with the in-process cache."""


def encode_float(value: float) -> bytes:
    """version byte + little-endian float64 + CRC32 of both: 13 bytes."""
    body = struct.pack("<Bd", FLOAT_FORMAT, value)
    return body + struct.pack("<I", zlib.crc32(body))


def decode_float(raw: bytes | None) -> float | None:
    """The stored float, or None for a missing, truncated, foreign or corrupt value."""
    if raw is None or len(raw) != 13 or raw[0] != FLOAT_FORMAT:
        return None
    body, (crc,) = raw[:9], struct.unpack("<I", raw[9:])
    return struct.unpack("<d", raw[1:9])[0] if zlib.crc32(body) == crc else None


def encode_json(value: Any) -> bytes:
    """magic + payload length (8 bytes) + SHA-256 of the payload + UTF-8 JSON."""
    payload = json.dumps(value).encode()
    return JSON_MAGIC + struct.pack("<Q", len(payload)) + hashlib.sha256(payload).digest() + payload


def decode_json(raw: bytes | None) -> Any | None:
    """The stored JSON value, or None for a missing, truncated, foreign or corrupt blob."""
    head = len(JSON_MAGIC) + 8 + 32
    if raw is None or len(raw) < head or not raw.startswith(JSON_MAGIC):
        return None
    (n,) = struct.unpack("<Q", raw[len(JSON_MAGIC) : len(JSON_MAGIC) + 8])
    digest, payload = raw[len(JSON_MAGIC) + 8 : head], raw[head:]
    if len(payload) != n or hashlib.sha256(payload).digest() != digest:
        return None
    return json.loads(payload)


class ScoreCache(ABC):
    """Per-image float scores under a namespace, and JSON blobs under a key. Counts hits and misses."""

    def __init__(self) -> None:
        self.hits = 0  # per-image scores and blobs found
        self.misses = 0  # per-image scores and blobs the caller has to compute

    def _count(self, found: int, asked: int) -> None:
        self.hits += found
        self.misses += asked - found

    @abstractmethod
    def get_many(self, namespace: str, ids: Iterable[int]) -> dict[int, float]:
        """The cached scores among `ids` (missing ids are absent from the result)."""

    @abstractmethod
    def put_many(self, namespace: str, scores: Mapping[int, float]) -> None:
        """Store scores by image id."""

    @abstractmethod
    def get_json(self, key: str) -> Any | None:
        """The cached JSON value, or None."""

    @abstractmethod
    def put_json(self, key: str, value: Any) -> None:
        """Store a JSON-able value."""


class LocalCache(ScoreCache):
    """This process's cache: the embedded default, and `RedisCache`'s fallback."""

    def __init__(self) -> None:
        super().__init__()
        self._scores: dict[str, dict[int, float]] = {}
        self._blobs: dict[str, str] = {}  # JSON text, so callers never share a mutable value
        self._lock = threading.Lock()

    def get_many(self, namespace: str, ids: Iterable[int]) -> dict[int, float]:
        ids = [int(i) for i in ids]
        with self._lock:
            table = self._scores.get(namespace, {})
            found = {i: table[i] for i in ids if i in table}
        self._count(len(found), len(ids))
        return found

    def put_many(self, namespace: str, scores: Mapping[int, float]) -> None:
        with self._lock:
            self._scores.setdefault(namespace, {}).update({int(k): float(v) for k, v in scores.items()})

    def get_json(self, key: str) -> Any | None:
        with self._lock:
            text = self._blobs.get(key)
        self._count(text is not None, 1)
        return None if text is None else json.loads(text)

    def put_json(self, key: str, value: Any) -> None:
        text = json.dumps(value)
        with self._lock:
            self._blobs[key] = text


def redact(url: str) -> str:
    """The URL without its password, for messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


class RedisCache(ScoreCache):
    """Shared through Redis, written through to a local cache; on any Redis error it warns once and from
    then on serves the local cache only (the fallback is sticky for the life of this object)."""

    def __init__(self, url: str, local: LocalCache | None = None, timeout_s: float = 2.0) -> None:
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        super().__init__()
        self.url, self.local = url, local or LocalCache()
        self.corrupt = 0  # stored values that failed their check (counted as misses)
        self.fell_back: str | None = None  # why Redis was given up, once it was
        self._errors: tuple[type[BaseException], ...] = (redis.RedisError, OSError)
        self.client: Any = None
        try:  # no retries: a dead server must cost one timeout, not an exponential back-off
            client = redis.Redis.from_url(
                url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s, retry=Retry(NoBackoff(), 0)
            )
            client.ping()
            self.client = client
        except (*self._errors, ValueError) as e:
            self._fall_back("is unreachable", e)

    def _fall_back(self, what: str, err: BaseException) -> None:
        self.client, self.fell_back = None, f"{type(err).__name__}: {err}"
        warnings.warn(
            f"score cache: Redis at {redact(self.url)} {what} ({self.fell_back}); continuing with the in-process "
            "cache, so scores it does not hold are recomputed here",
            ScoreCacheWarning,
            stacklevel=3,
        )

    def _remote(self, op: str, fn: Any) -> Any:
        """fn(client), or None when Redis is (or just went) away."""
        if self.client is None:
            return None
        try:
            return fn(self.client)
        except self._errors as e:
            self._fall_back(f"went away during {op}", e)
            return None

    def _key(self, kind: str, name: str) -> str:
        return f"{KEY_PREFIX}{kind}:{name}"

    def get_many(self, namespace: str, ids: Iterable[int]) -> dict[int, float]:
        ids = [int(i) for i in ids]
        found = self.local.get_many(namespace, ids)
        missing = [i for i in ids if i not in found]
        raw = self._remote("get_many", lambda c: c.hmget(self._key("scores", namespace), missing)) if missing else None
        fetched = {}
        for i, value in zip(missing, raw or [], strict=False):
            score = decode_float(value)
            self.corrupt += value is not None and score is None
            if score is not None:
                fetched[i] = score
        self.local.put_many(namespace, fetched)
        found.update(fetched)
        self._count(len(found), len(ids))
        return found

    def put_many(self, namespace: str, scores: Mapping[int, float]) -> None:
        self.local.put_many(namespace, scores)
        if scores:
            mapping = {int(k): encode_float(float(v)) for k, v in scores.items()}
            self._remote("put_many", lambda c: c.hset(self._key("scores", namespace), mapping=mapping))

    def get_json(self, key: str) -> Any | None:
        value = self.local.get_json(key)
        if value is None:
            raw = self._remote("get_json", lambda c: c.get(self._key("json", key)))
            value = decode_json(raw)
            self.corrupt += raw is not None and value is None
            if value is not None:
                self.local.put_json(key, value)
        self._count(value is not None, 1)
        return value

    def put_json(self, key: str, value: Any) -> None:
        self.local.put_json(key, value)
        blob = encode_json(value)
        self._remote("put_json", lambda c: c.set(self._key("json", key), blob))


_PROCESS_CACHE = LocalCache()


@lru_cache(maxsize=8)
def _open(redis_url: str | None, timeout_s: float) -> ScoreCache:
    return _PROCESS_CACHE if redis_url is None else RedisCache(redis_url, LocalCache(), timeout_s)


def open_cache(cfg: Any) -> ScoreCache:
    """This process's cache for a `CacheConfig`: the in-process one, or one `RedisCache` per URL (so a
    fallen-back URL warns once per process, not once per environment)."""
    return _open(cfg.redis_url, cfg.timeout_s)


def reset_open_caches() -> None:
    """Forget the caches `open_cache` made (a test's way to look like a fresh process)."""
    from posisp_dist.cache.keys import code_fingerprint

    _open.cache_clear()
    _PROCESS_CACHE.__init__()
    code_fingerprint.cache_clear()


def cached_json(cache: ScoreCache, key: str | None, compute: Any) -> Any:
    """The value under `key`, else `compute()` stored there; JSON round-tripped either way, so a hit and a
    miss return equal values. A None key (a task model without a fingerprint) always computes."""
    if key is not None and (hit := cache.get_json(key)) is not None:
        return hit
    value = json.loads(json.dumps(compute()))
    if key is not None:
        cache.put_json(key, value)
    return value
