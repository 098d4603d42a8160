"""Keeping every replica's label snapshot current: Redis pub/sub, with polling underneath.

A label move commits to storage and bumps ``prompt_state.revision``; then the mover publishes on
``gateway:prompts:labels``. Each replica runs one loop that reloads its snapshot when the
revision changed, woken either by a pub/sub message (milliseconds) or by its poll timer
(``prompts.poll_interval_s``, default 0.5 s). Redis is only a doorbell: no state lives there,
so a lost message, a Redis outage or no Redis at all costs at most one poll interval. If storage
is unreachable the replica keeps serving its last snapshot and retries (fail-open: labels may
be stale, versions never are, since they are immutable and verified).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from gateway.redis.wire import RedisReplyError, RedisUnavailable, RedisWire
from gateway.throttled_log import ThrottledLog

log = logging.getLogger("gateway.prompts")

CHANNEL = b"gateway:prompts:labels"
_WARN_EVERY_S = 30.0
#: How often an idle subscription is checked with a PING: a Redis that froze or vanished
#: without closing the connection is noticed within this plus the reply deadline.
_PING_EVERY_S = 5.0


async def publish_change(redis: RedisWire | None) -> None:
    """Ring the doorbell after a committed move; failures only delay others until their next poll."""
    if redis is None:
        return
    try:
        await redis.call(b"PUBLISH", CHANNEL, b"1")
    except (RedisUnavailable, RedisReplyError) as exc:
        log.warning("could not publish a prompt label change; replicas will see it at their next poll",
                    extra={"error": type(exc).__name__})


class LabelSync:
    """The background tasks of one replica: the refresh loop and, with Redis, the subscriber."""

    def __init__(
        self, refresh: Callable[[], Awaitable[bool]], redis: RedisWire | None, poll_interval_s: float
    ) -> None:
        self._refresh = refresh
        self._redis = redis
        self._interval = poll_interval_s
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._warning = ThrottledLog(log, every_s=_WARN_EVERY_S)

    def start(self) -> None:
        self._tasks.append(asyncio.create_task(self._refresh_loop(), name="prompt-labels-refresh"))
        if self._redis is not None:
            self._tasks.append(asyncio.create_task(self._subscribe_loop(self._redis), name="prompt-labels-pubsub"))

    def wake(self) -> None:
        self._wake.set()

    async def close(self, timeout_s: float = 2.0) -> None:
        """Stop both loops; bounded, because a subscriber stuck closing its Redis connection
        once kept a replica that failed to bind from ever exiting."""
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            _, stuck = await asyncio.wait(self._tasks, timeout=timeout_s)
            if stuck:
                log.warning("prompt label tasks did not stop in time; abandoning them",
                            extra={"tasks": sorted(task.get_name() for task in stuck)})
        self._tasks.clear()

    async def _refresh_loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._interval)
            self._wake.clear()
            try:
                await self._refresh()
            except Exception as exc:
                # Storage hiccups must not kill the loop: keep serving the last snapshot.
                self._warning.log("could not refresh prompt labels; serving the last known ones",
                                  error=f"{type(exc).__name__}: {exc}")

    async def _subscribe_loop(self, redis: RedisWire) -> None:
        backoff = 0.5
        while True:
            subscription = None
            try:
                subscription = await redis.subscribe(CHANNEL, lambda _channel, _data: self._wake.set())
                backoff = 0.5
                # Messages may have been missed while (re)connecting.
                self._wake.set()
                while True:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(asyncio.shield(subscription.closed), _PING_EVERY_S)
                    if subscription.closed.done():
                        raise RedisUnavailable("Redis closed the subscription")
                    await subscription.ping()
            except (RedisUnavailable, RedisReplyError) as exc:
                self._warning.log("prompt label subscription lost; polling until Redis is back",
                                  error=f"{type(exc).__name__}: {exc}")
            finally:
                if subscription is not None:
                    subscription.close()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 10.0)
