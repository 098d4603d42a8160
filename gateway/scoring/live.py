"""Scoring live answers off the request path: sampled, queued, scored in a worker, fanned out.

On the request path (``record``, a record-stage sink) scoring only decides and enqueues:

1. only a caller's chat request answered 200 with a complete answer is a candidate;
2. a request in a rollout is always taken (its analysis needs both variants' numbers); any
   other is taken at the rate policy sets for its prompt or alias (``policies/scoring.yaml``);
3. a taken request without a context (``ctx.scoring_context``) is not scored, only counted;
4. the request is appended to a bounded deque; a full deque drops it and counts the drop.

A background task takes up to ``batch_size`` requests at a time, turns each into (context,
question, answer) text, and hands the batch to a *runner* that scores it away from the event
loop: by default a separate process, because a CPU-bound evaluator in a thread of this process
holds the GIL and delays the requests being served; each answer has a budget of
``timeout_s``, and a batch over its budget has its process killed (a fresh one starts for the
next batch). An evaluator that raises, hangs or crashes costs scores (counted), never a request.

Each score goes to the gateway's store (``ScoreWriter``), to Langfuse as a ``hallucination``
score on the request's trace (when tracing is on), and into the histogram
``gateway_hallucination_score`` by prompt, version and variant.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final

from gateway.context import Endpoint, Origin, RequestContext
from gateway.scoring.context import passages_text
from gateway.scoring.langfuse import LangfuseScore
from gateway.scoring.runners import Case, Outcome, Runner
from gateway.scoring.store import ScoredAnswer

if TYPE_CHECKING:
    from prometheus_client import Counter, Histogram

    from gateway.scoring.langfuse import ScoreSender
    from gateway.scoring.store import ScoreWriter

log = logging.getLogger("gateway.scoring")

#: The longest question text handed to an evaluator (words of the question count half).
MAX_QUESTION_CHARS: Final = 4000
#: The score's name in Langfuse.
SCORE_NAME: Final = "hallucination"

# -- the sink and the worker task --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LiveMetrics:
    scored: Histogram  # by prompt, version, variant
    skipped: Counter  # by reason: no_context, empty_answer
    dropped: Counter  # by reason: queue_full, timeout, evaluator_error, store_*, shutdown


RateOf = Callable[[RequestContext], float]


def policy_rate(ctx: RequestContext) -> float:
    """The request's sample rate from the catalog it was served under (``policies/scoring.yaml``)."""
    alias = ctx.alias.name if ctx.alias is not None else None
    rate: float = ctx.catalog.bundle.scoring.rate(ctx.prompt_name, alias)
    return rate


class LiveScorer:
    """The record-stage sink (``record``) and the task that scores what it queued."""

    def __init__(
        self,
        runner: Runner,
        metrics: LiveMetrics,
        *,
        queue_size: int,
        batch_size: int,
        timeout_s: float,
        writer: ScoreWriter | None = None,
        sender: ScoreSender | None = None,
        rate_of: RateOf = policy_rate,
        flush_interval_s: float = 0.05,
    ) -> None:
        self._runner = runner
        self._metrics = metrics
        self._max = queue_size
        self._batch = batch_size
        self._budget = timeout_s
        self._writer = writer
        self._sender = sender
        self._rate_of = rate_of
        self._interval = flush_interval_s
        self._queue: collections.deque[RequestContext] = collections.deque()
        self._no_context = metrics.skipped.labels("no_context")
        self._dropped_full = metrics.dropped.labels("queue_full")
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.scored = 0  # answers scored by this replica (tests, the benchmark)

    # -- on the request path -----------------------------------------------------------------

    def record(self, ctx: RequestContext) -> None:
        """Queue a finished request for scoring, if it is sampled and has a context (never blocks)."""
        if ctx.status != 200 or ctx.origin is not Origin.CALLER or ctx.endpoint is not Endpoint.CHAT:
            return
        if ctx.answer is None or not ctx.answer.complete or ctx.error is not None:
            return  # a stream cut short says nothing about what the whole answer would have said
        if ctx.rollout_id is None:
            rate = self._rate_of(ctx)
            if rate <= 0.0 or (rate < 1.0 and random.random() >= rate):
                return
        if ctx.scoring_context is None:
            self._no_context.inc()
            return
        queue = self._queue
        if len(queue) >= self._max:
            self._dropped_full.inc()
            return
        queue.append(ctx)
        self._wake.set()

    @property
    def queued(self) -> int:
        return len(self._queue)

    # -- in the background -------------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="live-scoring")

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            # A short pause lets a burst gather into one batch (one hand-off to the worker).
            await asyncio.sleep(self._interval)
            self._wake.clear()
            while self._queue:
                try:
                    await self.score_batch()
                except Exception:
                    log.exception("live scoring failed on a batch; dropped")

    async def score_batch(self) -> int:
        """Score up to one batch from the queue; returns how many answers were scored."""
        queue = self._queue
        taken = [queue.popleft() for _ in range(min(self._batch, len(queue)))]
        cases: list[Case] = []
        kept: list[RequestContext] = []
        for ctx in taken:
            case = case_of(ctx)
            if case is None:
                self._metrics.skipped.labels("no_context").inc()
                continue
            if not case[2].strip():
                self._metrics.skipped.labels("empty_answer").inc()
                continue
            cases.append(case)
            kept.append(ctx)
        if not cases:
            return 0
        outcomes = await self._runner.run(cases, self._budget)
        done = 0
        now = datetime.now(UTC)
        for ctx, outcome in zip(kept, outcomes, strict=True):
            if outcome.failure is not None:
                self._metrics.dropped.labels(outcome.failure).inc()
                continue
            self.deliver(scored_answer(ctx, outcome, self._runner.name, now))
            done += 1
        self.scored += done
        return done

    def deliver(self, scored: ScoredAnswer) -> None:
        prompt = scored.prompt_name or ""
        version = str(scored.prompt_version) if scored.prompt_version is not None else ""
        self._metrics.scored.labels(prompt, version, scored.variant or "").observe(scored.score)
        if self._writer is not None:
            self._writer.submit(scored)
        if self._sender is not None and scored.trace_id is not None:
            self._sender.submit(langfuse_score(scored))

    async def close(self, deadline: float) -> None:
        """Stop taking new work, score what is queued until ``deadline`` (monotonic), count the rest."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max(deadline - time.monotonic(), 0.001)):
                while self._queue:
                    await self.score_batch()
        if self._queue:
            self._metrics.dropped.labels("shutdown").inc(len(self._queue))
            self._queue.clear()
        await asyncio.to_thread(self._runner.close)


def case_of(ctx: RequestContext) -> Case | None:
    """(context, question, answer) of a finished request; None when it has no usable context."""
    context = passages_text(ctx.scoring_context)
    if context is None or ctx.answer is None:
        return None
    return context, question_of(ctx.body.get("messages")), ctx.answer.text


def question_of(messages: Any) -> str:
    """The last user message's text (what the answer answers), bounded."""
    if not isinstance(messages, list):
        return ""
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, str):
                return content[:MAX_QUESTION_CHARS]
            if isinstance(content, list):
                texts = [part.get("text", "") for part in content if isinstance(part, dict)]
                return " ".join(t for t in texts if isinstance(t, str))[:MAX_QUESTION_CHARS]
            return ""
    return ""


def scored_answer(ctx: RequestContext, outcome: Outcome, evaluator: str, now: datetime) -> ScoredAnswer:
    return ScoredAnswer(
        request_id=ctx.request_id,
        trace_id=ctx.trace_id,
        team=ctx.team,
        alias=ctx.alias.name if ctx.alias is not None else None,
        prompt_name=ctx.prompt_name,
        prompt_version=ctx.prompt_version,
        variant=ctx.variant,
        rollout_id=ctx.rollout_id,
        evaluator=evaluator,
        score=outcome.score,
        threshold=outcome.threshold,
        claims=outcome.claims,
        unsupported=outcome.unsupported,
        reasons=outcome.reasons,
        ts=now,
    )


def langfuse_score(scored: ScoredAnswer) -> LangfuseScore:
    assert scored.trace_id is not None
    label = "hallucinated" if scored.hallucinated else "grounded"
    comment = f"{label}: {scored.unsupported} of {scored.claims} claims unsupported"
    if scored.reasons:
        comment += "\n" + "\n".join(scored.reasons)
    metadata: dict[str, Any] = {
        "evaluator": scored.evaluator,
        "threshold": scored.threshold,
        "request_id": scored.request_id,
        "label": label,
    }
    for key in ("prompt_name", "prompt_version", "variant", "rollout_id"):
        value = getattr(scored, key)
        if value is not None:
            metadata[key] = value
    return LangfuseScore(
        id=f"{scored.trace_id}-{SCORE_NAME}",
        trace_id=scored.trace_id,
        name=SCORE_NAME,
        value=round(scored.score, 6),
        comment=comment,
        metadata=metadata,
    )
