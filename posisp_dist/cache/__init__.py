"""The shared score cache: per-image reference scores and eval results, in-process or through Redis."""

from posisp_dist.cache.keys import checkpoint_fingerprint, code_fingerprint, eval_key, reference_namespace
from posisp_dist.cache.score_cache import (
    LocalCache,
    RedisCache,
    ScoreCache,
    ScoreCacheWarning,
    cached_json,
    open_cache,
    reset_open_caches,
)

__all__ = [
    "LocalCache",
    "RedisCache",
    "ScoreCache",
    "ScoreCacheWarning",
    "cached_json",
    "checkpoint_fingerprint",
    "code_fingerprint",
    "eval_key",
    "open_cache",
    "reference_namespace",
    "reset_open_caches",
]
