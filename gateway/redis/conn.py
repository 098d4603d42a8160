"""The one Redis client a process shares (redis-py asyncio with hiredis, pooled).

Features that use Redis (cache, budgets, prompt-label broadcasts) take this client from the
runtime; none opens its own. Each feature decides what a Redis failure means for it
(fail-open for the cache, fail-closed or in-process fallback for budgets) and documents it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from gateway.config.settings import RedisSettings

if TYPE_CHECKING:
    import redis.asyncio as aioredis


def connect_redis(settings: RedisSettings) -> aioredis.Redis | None:
    """A pooled client, or ``None`` when no URL is configured (embedded fallbacks apply)."""
    if not settings.url:
        return None
    # Imported here, not at module level: redis-py (with the OpenTelemetry modules it pulls in)
    # costs ~175 ms of start-up, wasted on the embedded defaults, which use no Redis.
    import redis.asyncio as aioredis

    timeout = max(settings.op_timeout_ms / 1000, 0.001)
    return aioredis.Redis.from_url(
        settings.url,
        # Per-operation deadline: a slow Redis must not slow requests past this.
        socket_timeout=timeout,
        socket_connect_timeout=max(timeout, 0.25),
        health_check_interval=0,
        max_connections=512,
        decode_responses=False,
        retry_on_timeout=False,
    )
