"""Scores to Langfuse, off the request path: a bounded queue and one sending task.

Langfuse's scores API (``POST /api/public/scores``, basic auth with the project's keys) takes
one score per call. Scores on the request's trace are: ``hallucination`` (each scored live
answer), each feedback metric posted to ``/v1/feedback``, and ``rollout_rolled_back`` on the
traces of a canary that was rolled back. Each score has a deterministic ``id``, so a retried
call that Langfuse had in fact taken updates the same score instead of adding another.

Failure rules, like the trace exporter's: the queue is bounded (full: dropped and counted);
one batch is sent at a time, its calls ``concurrency`` at a time, each within ``timeout_s``; a
call Langfuse did not take for a reason that may pass (5xx, 429, no answer) is retried up to
``retries`` times with backoff, then dropped and counted. A 4xx other than 429 is not retried.
Nothing here ever waits on a request, nor a request on it.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

import aiohttp

from gateway.throttled_log import ThrottledLog

if TYPE_CHECKING:
    from prometheus_client import Counter

    from gateway.config.settings import TracingSettings

log = logging.getLogger("gateway.scoring")

SCORES_PATH: Final = "/api/public/scores"
_BACKOFF_S: Final = 0.2
_LOG_EVERY_S: Final = 30.0
_MAX_COMMENT: Final = 2000


@dataclass(frozen=True, slots=True)
class LangfuseScore:
    """One score on a trace, as Langfuse's scores API takes it."""

    id: str
    trace_id: str
    name: str
    value: float
    comment: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    def body(self, environment: str) -> dict[str, Any]:
        found: dict[str, Any] = {
            "id": self.id,
            "traceId": self.trace_id,
            "name": self.name,
            "value": self.value,
            "dataType": "NUMERIC",
            "environment": environment,
        }
        if self.comment:
            found["comment"] = self.comment[:_MAX_COMMENT]
        if self.metadata:
            found["metadata"] = self.metadata
        return found


class ScoreSender:
    """Sends queued scores to Langfuse (``submit`` never blocks; a full queue drops and counts)."""

    def __init__(
        self,
        settings: TracingSettings,
        *,
        queue_size: int,
        retries: int,
        sent: Counter,
        dropped: Counter,
        batch_size: int = 64,
        concurrency: int = 4,
    ) -> None:
        self.settings = settings
        self.endpoint = settings.langfuse_url + SCORES_PATH  # LANGFUSE_HOST or LANGFUSE_BASE_URL
        credentials = f"{settings.public_key}:{settings.secret_key.get_secret_value()}"
        self._authorization = "Basic " + base64.b64encode(credentials.encode()).decode()
        self._queue: collections.deque[LangfuseScore] = collections.deque()
        self._max = queue_size
        self._retries = retries
        self._batch = batch_size
        self._concurrency = concurrency
        self._sent = sent
        self._dropped_full = dropped.labels("queue_full")
        self._dropped_failed = dropped.labels("send_failed")
        self._dropped_shutdown = dropped.labels("shutdown")
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None
        self._warning = ThrottledLog(log, every_s=_LOG_EVERY_S)

    def submit(self, score: LangfuseScore) -> None:
        if len(self._queue) >= self._max:
            self._dropped_full.inc()
            self._warn("the queue is full")
            return
        self._queue.append(score)
        self._wake.set()

    @property
    def queued(self) -> int:
        return len(self._queue)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="langfuse-scores")

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._queue:
                await self.send_batch()

    async def send_batch(self) -> int:
        """Send up to one batch; returns how many Langfuse took."""
        taken = [self._queue.popleft() for _ in range(min(self._batch, len(self._queue)))]
        if not taken:
            return 0
        gate = asyncio.Semaphore(self._concurrency)
        settled = 0

        async def one(score: LangfuseScore) -> bool:
            nonlocal settled
            async with gate:
                taken_ok = await self._send(score)
            settled += 1
            return taken_ok

        try:
            results = await asyncio.gather(*(one(score) for score in taken))
        except asyncio.CancelledError:  # stopped mid-batch: what was not settled is lost, say so
            self._dropped_shutdown.inc(len(taken) - settled)
            raise
        return sum(results)

    async def _send(self, score: LangfuseScore) -> bool:
        body = score.body(self.settings.environment)
        error = ""
        for attempt in range(self._retries + 1):
            if attempt:
                await asyncio.sleep(_BACKOFF_S * 2 ** (attempt - 1))
            error, again = await self._post(body)
            if not error:
                self._sent.inc()
                return True
            if not again:
                break
        self._dropped_failed.inc()
        self._warn(error)
        return False

    async def _post(self, body: dict[str, Any]) -> tuple[str, bool]:
        """One call: ("", _) when taken, else (why, whether a retry may help)."""
        session = self._session
        if session is None or session.closed:
            session = self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.settings.timeout_s),
                connector=aiohttp.TCPConnector(limit=self._concurrency),
            )
        headers = {"Authorization": self._authorization}
        try:
            async with session.post(self.endpoint, json=body, headers=headers) as response:
                await response.read()
                if response.status < 300:
                    return "", False
                return f"HTTP {response.status}", response.status >= 500 or response.status == 429
        except TimeoutError:
            return f"no answer within {self.settings.timeout_s}s", True
        except aiohttp.ClientError as error:
            return type(error).__name__, True

    def _warn(self, reason: str) -> None:
        self._warning.log("scores not delivered to Langfuse: %s", reason, endpoint=self.endpoint)

    async def close(self, deadline: float) -> None:
        """Stop the task, send what is queued until ``deadline`` (monotonic), count the rest."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        try:
            while self._queue and time.monotonic() < deadline:
                try:
                    taken = await asyncio.wait_for(self.send_batch(), max(deadline - time.monotonic(), 0.001))
                except TimeoutError:
                    break
                if not taken:
                    break  # Langfuse is not taking them: do not spend the bound retrying
        finally:
            if self._queue:
                self._dropped_shutdown.inc(len(self._queue))
                self._queue.clear()
            if self._session is not None:
                with contextlib.suppress(Exception):
                    await self._session.close()
