"""Stage 5, the response cache: exact-match, team-scoped, streaming-aware, fail-open.

    from gateway.cache import build_cache
    runtime.cache = build_cache(runtime)   # None when cache.enabled is false

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

if TYPE_CHECKING:
    from gateway.cache.redis_store import RedisStore
    from gateway.runtime import Runtime

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


def build_cache(runtime: Runtime) -> Cache | None:
    """The cache stage for this runtime's settings; registers its shutdown step."""
    settings = runtime.settings.cache
    if not settings.enabled:
        return None
    if settings.backend == "redis" and runtime.redis is None:
        raise ConfigError(["gateway.yaml: cache.backend is redis but redis.url is empty"])
    use_redis = runtime.redis is not None and settings.backend != "memory"
    metrics = CacheMetrics(runtime.metrics, "redis" if use_redis else "memory")
    store: CacheStore
    if use_redis:
        assert runtime.redis is not None
        # Here, not at the top: the store's module imports redis-py (~175 ms of start-up),
        # which the embedded defaults, without Redis, never need.
        from gateway.cache.redis_store import RedisStore

        try:
            store = RedisStore(
                runtime.settings.redis.url,  # its own wire connection for the request path
                metrics,
                admin=runtime.redis,  # the shared client, for purges
                op_timeout_s=runtime.settings.redis.op_timeout_ms / 1000,
                compress_min=settings.compress_min_bytes,
                max_pending=settings.max_pending_writes,
                breaker_failures=settings.breaker_failures,
                breaker_retry_s=settings.breaker_retry_s,
            )
        except ValueError as exc:
            raise ConfigError([f"gateway.yaml: redis.url: {exc}"]) from None
    else:
        store = MemoryStore(settings.memory_max_bytes, metrics)
    runtime.closers.append(store.close)  # finishes background writes, then closes its connection
    return Cache(store, metrics, wait_s=settings.singleflight_wait_s)


def __getattr__(name: str) -> type[RedisStore]:
    if name == "RedisStore":
        from gateway.cache.redis_store import RedisStore

        return RedisStore
    raise AttributeError(f"module 'gateway.cache' has no attribute {name!r}")
