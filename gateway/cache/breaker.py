"""A circuit breaker that stops asking a dead dependency, and notices on its own when it is back.

Closed, every operation runs (each bounded by its own timeout). After ``failures``
consecutive failures it opens: operations are skipped at no cost, so a dead Redis adds no
latency at all. While open, a background task probes every ``retry_s``; the first probe
that succeeds closes it again. No request is ever used as the probe, so no caller pays for
finding out. Each state change is logged once and reported to ``on_change``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger("gateway.cache")


class CircuitBreaker:
    def __init__(
        self,
        name: str,
        *,
        failures: int,
        retry_s: float,
        probe: Callable[[], Awaitable[bool]],
        on_change: Callable[[bool], None] | None = None,
    ) -> None:
        self.name = name
        #: A plain attribute, read on every request: True while operations should run.
        self.closed = True
        self._threshold = failures
        self._retry_s = retry_s
        self._probe = probe
        self._on_change = on_change
        self._failures = 0
        self._task: asyncio.Task[None] | None = None

    def success(self) -> None:
        self._failures = 0

    def failure(self, reason: str) -> None:
        if not self.closed:
            return
        self._failures += 1
        if self._failures >= self._threshold:
            self._open(reason)

    def _open(self, reason: str) -> None:
        self.closed = False
        log.warning(
            "%s unavailable (%s): circuit breaker open, requests bypass it until it answers again",
            self.name,
            reason,
            extra={"breaker": self.name, "state": "open"},
        )
        if self._on_change is not None:
            self._on_change(True)
        self._task = asyncio.get_running_loop().create_task(self._probe_until_back())

    def _close(self) -> None:
        self.closed = True
        self._failures = 0
        log.info(
            "%s is back: circuit breaker closed",
            self.name,
            extra={"breaker": self.name, "state": "closed"},
        )
        if self._on_change is not None:
            self._on_change(False)

    async def _probe_until_back(self) -> None:
        while True:
            await asyncio.sleep(self._retry_s)
            if await self._probe():
                self._close()
                return

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
