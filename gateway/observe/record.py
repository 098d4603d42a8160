"""The record stage: once a request is over, count it, log it, and hand it to the sinks.

It is the outermost stage so it sees every outcome: a 401, a cache hit, a budget
rejection, an upstream failure, a stream cut short. Its finisher is registered before the
inner stages run, so it runs last, after the inner finishers have priced and committed.
Sinks (the cost ledger, tracing) must only enqueue: nothing here may block or await.
"""

from __future__ import annotations

import logging
import time
from typing import Protocol

from gateway.context import Reply, RequestContext
from gateway.errors import GatewayError
from gateway.observe.access import AccessLog
from gateway.observe.metrics import Metrics
from gateway.pipeline_types import Handler

log = logging.getLogger("gateway.record")


class RequestSink(Protocol):
    def record(self, ctx: RequestContext) -> None:
        """Take a finished request; must not block (enqueue, never await or do I/O inline)."""


class Record:
    def __init__(self, metrics: Metrics, sinks: list[RequestSink], *, access_log: AccessLog | None = None) -> None:
        self._metrics = metrics
        self._sinks = sinks
        self._access_log = access_log

    async def __call__(self, ctx: RequestContext, call_next: Handler) -> Reply:
        self._metrics.in_flight.inc()
        ctx.on_finish(self._finish)
        try:
            return await call_next(ctx)
        except GatewayError as error:
            ctx.error = error
            ctx.status = error.status
            raise

    def add_sink(self, sink: RequestSink) -> None:
        self._sinks.append(sink)

    def _finish(self, ctx: RequestContext) -> None:
        m = self._metrics
        m.in_flight.dec()
        model = ctx.alias.name if ctx.alias is not None else "unknown"
        team = ctx.team if ctx.principal is not None else "anonymous"
        elapsed = time.perf_counter() - ctx.started
        m.child(m.requests, team, model, str(ctx.status)).inc()
        m.child(m.latency, model).observe(elapsed)
        m.child(m.overhead, ctx.endpoint.value).observe(ctx.overhead_seconds)
        if ctx.usage is not None:
            m.child(m.tokens, team, model, "input").inc(ctx.usage.prompt_tokens)
            m.child(m.tokens, team, model, "output").inc(ctx.usage.completion_tokens)
        if ctx.cost:
            m.child(m.cost, team, model).inc(ctx.cost)
        for sink in self._sinks:
            try:
                sink.record(ctx)
            except Exception:
                log.exception("request sink failed", extra={"request_id": ctx.request_id})
        if self._access_log is not None:
            self._access_log.write(
                {
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
            )
