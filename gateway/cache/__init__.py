"""Stage 6, the response cache: exact-match, team-scoped, streaming-aware, fail-open.

    feature = build_cache(settings, metrics, redis)   # None when cache.enabled is false

The stage (``Cache``) sits between routing and the budget stage. Backends: Redis when
``redis.url`` is set (shared by replicas, guarded by a circuit breaker, with its own pipelined
connection for the request path), otherwise an in-process LRU store with the same semantics
for one process.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from gateway.cache.base import CacheStore, CacheUnavailable
from gateway.cache.entry import Entry
from gateway.cache.keys import PurgeFilter, is_deterministic, request_digest
from gateway.cache.memory import MemoryStore
from gateway.cache.metrics import CacheMetrics
from gateway.cache.stage import Cache
from gateway.config.yamlfile import ConfigError
from gateway.features import Feature

if TYPE_CHECKING:
    from gateway.cache.redis_store import RedisStore
    from gateway.config.settings import Settings
    from gateway.observe import Metrics
    from gateway.redis.wire import RedisWire

__all__ = [
    "Cache",
    "CacheStore",
    "CacheUnavailable",
    "Entry",
    "MemoryStore",
    "PurgeFilter",
    "RedisStore",  # loaded on first use, see __getattr__
    "build_cache",
    "is_deterministic",
    "request_digest",
]


def build_cache(settings: Settings, metrics: Metrics, redis: RedisWire | None) -> Feature | None:
    """The cache feature: its stage and the shutdown step that finishes background writes.

    ``redis`` is the process's shared off-path connection (purges); the request path gets its own wire
    connection to ``settings.redis.url``.
    """
    cache = settings.cache
    if not cache.enabled:
        return None
    if cache.backend == "redis" and redis is None:
        raise ConfigError(["gateway.yaml: cache.backend is redis but redis.url is empty"])
    use_redis = redis is not None and cache.backend != "memory"
    cache_metrics = CacheMetrics(metrics, "redis" if use_redis else "memory")
    store: CacheStore
    if use_redis:
        assert redis is not None
        # Here, not at the top: the store's module imports redis-py (~175 ms of start-up),
        # which the embedded defaults, without Redis, never need.
        from gateway.cache.redis_store import RedisStore

        try:
            store = RedisStore(
                settings.redis.url,  # its own wire connection for the request path
                cache_metrics,
                admin=redis,  # the shared client, for purges
                op_timeout_s=settings.redis.op_timeout_ms / 1000,
                compress_min=cache.compress_min_bytes,
                max_pending=cache.max_pending_writes,
                breaker_failures=cache.breaker_failures,
                breaker_retry_s=cache.breaker_retry_s,
            )
        except ValueError as exc:
            raise ConfigError([f"gateway.yaml: redis.url: {exc}"]) from None
    else:
        store = MemoryStore(cache.memory_max_bytes, cache_metrics)
    stage = Cache(store, cache_metrics, wait_s=cache.singleflight_wait_s)
    return Feature(stage=stage, closers=[store.close])  # finishes background writes, closes its connection


def __getattr__(name: str) -> type[RedisStore]:
    if name == "RedisStore":
        from gateway.cache.redis_store import RedisStore

        return RedisStore
    raise AttributeError(f"module 'gateway.cache' has no attribute {name!r}")
