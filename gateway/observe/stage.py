"""Stage 1, record: once a request is over, count it, log it, and hand it to the sinks.

It is the outermost stage so it sees every outcome: a 401, a cache hit, a budget
rejection, an upstream failure, a stream cut short. Its finisher is registered before the
inner stages run, so it runs last, after the inner finishers have priced and committed.
Sinks (the cost ledger, tracing) must only enqueue: nothing here may block or await.

An inner stage may have *deferred* work the record must wait for (``RequestContext.defer``:
counting a stream that reported no usage while its tokenizer is still being built). The
request is then recorded by a background task once that work is done, so the ledger row, the
metrics and the budget's settlement all carry the counted cost. Those tasks are bounded: past
``max_waiting``, the work is done synchronously instead (logged), never dropped; ``drain``
waits for them at shutdown, before the ledger's final flush.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Protocol

from gateway.context import Deferred, Reply, RequestContext
from gateway.errors import GatewayError
from gateway.observe.access import AccessLog
from gateway.observe.metrics import Metrics
from gateway.pipeline_types import Handler

log = logging.getLogger("gateway.record")


class RequestSink(Protocol):
    def record(self, ctx: RequestContext) -> None:
        """Take a finished request; must not block (enqueue, never await or do I/O inline)."""


#: Called as a request enters the pipeline, before any stage ran (tracing assigns the trace id
#: here, so it can go out as a response header). Must cost next to nothing and never raise.
RequestStarter = Callable[[RequestContext], None]


#: Requests whose recording may wait on deferred work at once. Deferral happens only while a
#: tokenizer is first built (under a second), so reaching this means a flood of usage-less streams.
MAX_WAITING = 1024


class Record:
    def __init__(
        self,
        metrics: Metrics,
        sinks: list[RequestSink],
        *,
        access_log: AccessLog | None = None,
        max_waiting: int = MAX_WAITING,
    ) -> None:
        self._metrics = metrics
        self._sinks = sinks
        self._starters: list[RequestStarter] = []
        self._access_log = access_log
        self._max_waiting = max_waiting
        self._waiting: set[asyncio.Task[None]] = set()
        self._over_cap_logged = 0.0

    async def __call__(self, ctx: RequestContext, call_next: Handler) -> Reply:
        self._metrics.in_flight.inc()
        for start in self._starters:
            start(ctx)
        ctx.on_finish(self._finish)
        try:
            return await call_next(ctx)
        except GatewayError as error:
            ctx.error = error
            ctx.status = error.status
            raise

    def add_sink(self, sink: RequestSink) -> None:
        self._sinks.append(sink)

    def add_starter(self, starter: RequestStarter) -> None:
        self._starters.append(starter)

    @property
    def waiting(self) -> int:
        """Requests not recorded yet because they wait on deferred work."""
        return len(self._waiting)

    async def drain(self) -> None:
        """Wait until every request waiting on deferred work is recorded (at shutdown)."""
        while self._waiting:
            await asyncio.gather(*self._waiting, return_exceptions=True)

    def _finish(self, ctx: RequestContext) -> None:
        self._metrics.in_flight.dec()
        elapsed = time.perf_counter() - ctx.started  # the request's, not the deferred work's
        work = ctx.take_deferred()
        if not work:
            self._record(ctx, elapsed)
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # finished outside a loop (a tool): nothing could wait anyway
            loop = None
        if loop is None or len(self._waiting) >= self._max_waiting:
            now = time.monotonic()
            if loop is not None and now - self._over_cap_logged >= 10.0:
                self._over_cap_logged = now
                log.warning(
                    "too many requests wait on deferred work; doing it synchronously",
                    extra={"request_id": ctx.request_id, "waiting": len(self._waiting)},
                )
            _run_now(ctx, work)
            self._record(ctx, elapsed)
            return
        task = loop.create_task(self._record_after(ctx, work, elapsed), name=f"record-{ctx.request_id}")
        self._waiting.add(task)
        task.add_done_callback(self._waiting.discard)

    async def _record_after(self, ctx: RequestContext, work: list[Deferred], elapsed: float) -> None:
        for index, item in enumerate(work):
            try:
                await item.wait()
            except asyncio.CancelledError:
                # Torn down mid-wait (a shutdown that did not drain): the rest, synchronously.
                _run_now(ctx, work[index + 1 :])
                self._record(ctx, elapsed)
                raise
            except Exception:
                log.exception("deferred finisher work failed", extra={"request_id": ctx.request_id})
        self._record(ctx, elapsed)

    def _record(self, ctx: RequestContext, elapsed: float) -> None:
        ctx.elapsed_seconds = elapsed
        m = self._metrics
        model = ctx.alias.name if ctx.alias is not None else "unknown"
        team = ctx.team if ctx.principal is not None else "anonymous"
        if not ctx.origin.internal:
            # What callers see: a shadow copy to a failing target or an evaluation case must not
            # move the request rate, error rate or latency alerts page on. Their spend below is
            # real and counted; the upstream stage counts their deployments' outcomes.
            m.child(m.requests, team, model, str(ctx.status)).inc()
            m.child(m.latency, model).observe(elapsed)
            m.child(m.overhead, ctx.endpoint.value).observe(ctx.overhead_seconds)
        if ctx.usage is not None:
            m.child(m.tokens, team, model, "input").inc(ctx.usage.prompt_tokens)
            m.child(m.tokens, team, model, "output").inc(ctx.usage.completion_tokens)
        if ctx.cost:
            m.child(m.cost, team, model).inc(ctx.cost)
        if ctx.prompt_version is not None and ctx.prompt_name is not None:
            # Names and versions come from the prompt repository, never from a caller.
            m.child(m.prompt_requests, ctx.prompt_name, str(ctx.prompt_version), ctx.prompt_label or "").inc()
        for sink in self._sinks:
            try:
                sink.record(ctx)
            except Exception:
                log.exception("request sink failed", extra={"request_id": ctx.request_id})
        if self._access_log is not None:
            line = {
                "request_id": ctx.request_id,
                "team": team,
                "key_id": ctx.principal.key_id if ctx.principal else None,
                "model": model,
                "deployment": ctx.deployment.label if ctx.deployment else None,
                "endpoint": ctx.endpoint.value,
                "stream": ctx.stream,
                "status": ctx.status,
                "attempts": ctx.attempts,
                "prompt_tokens": ctx.usage.prompt_tokens if ctx.usage else None,
                "completion_tokens": ctx.usage.completion_tokens if ctx.usage else None,
                "cost_usd": round(ctx.cost, 8),
                "latency_ms": round(elapsed * 1000, 3),
                "overhead_ms": round(ctx.overhead_seconds * 1000, 3),
                "error": ctx.error.code if ctx.error else None,
            }
            if ctx.origin.internal:  # a shadow copy or an evaluation case, and whose
                line["origin"] = ctx.origin.value
                line["parent_request_id"] = ctx.parent_id
            if ctx.trace_id is not None:  # tracing is on: logs, ledger rows and traces join on it
                line["trace_id"] = ctx.trace_id
            if ctx.rollout_id is not None:  # a progressive rollout took the request: which arm
                line["rollout"] = ctx.rollout_id
                line["variant"] = ctx.variant
            if ctx.data_class is not None:  # a class from the policy, never a caller's raw header
                line["data_class"] = ctx.data_class
            deployment = ctx.deployment
            if deployment is not None and ctx.alias is not None and deployment.alias != ctx.alias.name:
                line["served_alias"] = deployment.alias
            if ctx.downgraded_from is not None:
                line["downgraded_from"] = ctx.downgraded_from
            self._access_log.write(line)


def _run_now(ctx: RequestContext, work: list[Deferred]) -> None:
    for item in work:
        try:
            item.now()
        except Exception:
            log.exception("deferred finisher work failed", extra={"request_id": ctx.request_id})
