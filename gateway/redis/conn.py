"""The Redis connection a process shares for everything off the request path.

Features that use Redis off the request path (cache purges, prompt-label broadcasts and their
subscription, the readiness check) take this connection from the runtime. The request path's
users (the cache's lookups, budget reservations) open their own, with their own deadlines. Each
feature decides what a Redis failure means for it (fail-open for the cache, fail-closed or
in-process fallback for budgets) and documents it.
"""

from __future__ import annotations

from gateway.config.settings import RedisSettings
from gateway.redis.wire import RedisWire

#: Least time opening a connection gets (a TLS handshake takes longer than a reply), and no
#: more: the readiness check waits on it, and a probe's own timeout is often 1 s.
_CONNECT_S = 0.25


def connect_redis(settings: RedisSettings) -> RedisWire | None:
    """The shared connection (opened on first use), or ``None`` when no URL is configured
    (embedded fallbacks apply). Raises ``ValueError`` for a URL it cannot read."""
    if not settings.url:
        return None
    # Per-operation deadline: a slow Redis must not slow anything past this.
    timeout = max(settings.op_timeout_ms / 1000, 0.001)
    return RedisWire(settings.url, timeout_s=timeout, connect_timeout_s=max(timeout, _CONNECT_S))
