"""Scores and feedback in the gateway's own store: written in batches, read fleet-wide.

Every replica writes the ``hallucination_scores`` and ``feedback`` tables (migrations 90, 91),
so a rollout's analysis on any replica reads the numbers of the whole fleet, never one
replica's memory. Rows carry the request id (joinable with the ledger) and copy the request's
variant, rollout and prompt version, so the analysis reads one table per signal.

``ScoreWriter`` is off the request path: the scoring worker hands it scored answers, which wait
in a bounded deque (full: dropped and counted) and are written by one task with one
``executemany`` INSERT per batch. A batch the database refuses is retried a few times with
backoff, then dropped and counted: a score is a sample, not money.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Final

import orjson
from sqlalchemy import insert, select

from gateway.storage.schema import feedback, hallucination_scores, langfuse_scores

if TYPE_CHECKING:
    from prometheus_client import Counter

    from gateway.storage import Database

log = logging.getLogger("gateway.scoring")

_ATTEMPTS: Final = 4
_BACKOFF_S: Final = 0.1
#: Reasons kept per scored answer (the first unsupported claims'); the rest is in the trace.
MAX_REASONS: Final = 8


@dataclass(frozen=True, slots=True)
class ScoredAnswer:
    """One live answer's score, and the request it belongs to."""

    request_id: str
    trace_id: str | None
    team: str
    alias: str | None
    prompt_name: str | None
    prompt_version: int | None
    variant: str | None
    rollout_id: str | None
    evaluator: str
    score: float
    threshold: float
    claims: int
    unsupported: int
    reasons: tuple[str, ...]
    ts: datetime

    @property
    def hallucinated(self) -> bool:
        return self.score > self.threshold

    def row(self) -> dict[str, Any]:
        return {
            "ts": self.ts,
            "request_id": self.request_id,
            "trace_id": self.trace_id,
            "team": self.team,
            "alias": self.alias,
            "prompt_name": self.prompt_name,
            "prompt_version": self.prompt_version,
            "variant": self.variant,
            "rollout_id": self.rollout_id,
            "evaluator": self.evaluator,
            "score": self.score,
            "threshold": self.threshold,
            "hallucinated": self.hallucinated,
            "claims": self.claims,
            "unsupported": self.unsupported,
            "reasons": orjson.dumps(list(self.reasons[:MAX_REASONS])).decode(),
        }


class ScoreWriter:
    """Writes scored answers in batches (``submit`` never blocks; a full queue drops and counts)."""

    def __init__(
        self,
        db: Database,
        *,
        queue_size: int,
        batch_size: int,
        flush_interval_s: float,
        written: Counter,
        dropped: Counter,
    ) -> None:
        self._db = db
        self._queue: collections.deque[ScoredAnswer] = collections.deque()
        self._max = queue_size
        self._batch = batch_size
        self._interval = flush_interval_s
        self._written = written
        self._dropped_full = dropped.labels("store_queue_full")
        self._dropped_failed = dropped.labels("store_failed")
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def submit(self, scored: ScoredAnswer) -> None:
        if len(self._queue) >= self._max:
            self._dropped_full.inc()
            return
        self._queue.append(scored)
        if len(self._queue) >= self._batch:
            self._wake.set()

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="score-writer")

    async def _run(self) -> None:
        while True:
            if len(self._queue) < self._batch:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self._interval)
            self._wake.clear()
            while self._queue:
                await self.flush_batch()

    async def flush_batch(self) -> None:
        taken = [self._queue.popleft() for _ in range(min(self._batch, len(self._queue)))]
        if not taken:
            return
        rows = [scored.row() for scored in taken]
        for attempt in range(_ATTEMPTS):
            try:
                async with self._db.engine.begin() as conn:
                    await conn.execute(insert(hallucination_scores), rows)
                self._written.inc(len(rows))
                return
            except asyncio.CancelledError:
                self._dropped_failed.inc(len(rows))
                raise
            except Exception:
                if attempt + 1 == _ATTEMPTS:
                    log.exception("could not store hallucination scores; dropped", extra={"rows": len(rows)})
                    self._dropped_failed.inc(len(rows))
                    return
                await asyncio.sleep(_BACKOFF_S * 2**attempt)

    async def flush(self) -> None:
        """Write everything queued now (tests, shutdown)."""
        while self._queue:
            await self.flush_batch()

    async def close(self, deadline: float) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.flush(), max(deadline - time.monotonic(), 0.001))
        if self._queue:
            self._dropped_failed.inc(len(self._queue))
            self._queue.clear()


@dataclass(frozen=True, slots=True)
class ScoreSample:
    """One scored answer, as the rollout analysis reads it."""

    variant: str
    score: float
    hallucinated: bool


@dataclass(frozen=True, slots=True)
class FeedbackSample:
    variant: str
    metric: str
    value: float


class QualityStore:
    """Reads scores and feedback of a rollout's requests, fleet-wide (the analysis' source)."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def scores(self, rollout_id: str, since: datetime) -> list[ScoreSample]:
        c = hallucination_scores.c
        query = select(c.variant, c.score, c.hallucinated).where(c.rollout_id == rollout_id, c.ts >= since)
        async with self._db.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [ScoreSample(variant or "", float(score), bool(bad)) for variant, score, bad in rows]

    async def feedback(self, rollout_id: str, since: datetime) -> list[FeedbackSample]:
        c = feedback.c
        query = select(c.variant, c.metric, c.value).where(c.rollout_id == rollout_id, c.ts >= since)
        async with self._db.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [FeedbackSample(variant or "", metric, float(value)) for variant, metric, value in rows]

    async def langfuse(self, rollout_id: str, since: datetime) -> list[FeedbackSample]:
        """Scores pulled back from Langfuse's evaluators (``gateway.scoring.pull``), by name."""
        c = langfuse_scores.c
        query = select(c.variant, c.name, c.value).where(c.rollout_id == rollout_id, c.ts >= since)
        async with self._db.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [FeedbackSample(variant or "", name, float(value)) for variant, name, value in rows]

    async def trace_ids(self, rollout_id: str, variant: str, since: datetime, limit: int) -> list[str]:
        """Trace ids of a variant's scored requests since ``since`` (to annotate them)."""
        c = hallucination_scores.c
        query = (
            select(c.trace_id)
            .where(c.rollout_id == rollout_id, c.variant == variant, c.ts >= since, c.trace_id.is_not(None))
            .order_by(c.ts.desc())
            .limit(limit)
        )
        async with self._db.engine.connect() as conn:
            found: Sequence[str] = (await conn.execute(query)).scalars().all()
        return list(dict.fromkeys(found))
