"""Sending shadow copies once the primary answer is delivered, and comparing the answers.

The runner is a record-stage sink (``gateway.observe.RequestSink``): the record stage hands it
each finished request, in the last finish phase, after the caller has had the last byte (for a
stream: after its last event; the server calls ``ctx.finish()`` only then). For each copy on
the request's plan (``RoutingPlan.shadows``) it starts one background task and returns: the
caller's answer, status, headers and latency are decided before the runner ever sees the
request, so no copy can change them.

A copy is a fork of the primary (``ctx.fork(Origin.SHADOW)``) with ``model`` set to the
rule's target, run by the core handler (``Core.run``) like any internal request: no key check,
no response cache (the cache stage bypasses shadows), the answer tap collects its answer, the
ledger files it as kind ``shadow`` and the budget stage charges it to the team's shadow scope.

Failure rules, each counted in ``gateway_shadow_copies_total{rule, outcome}``:

    completed       the copy answered; its comparison is queued for storage
    error           it failed (upstream error, refused by policy, broken answer): row stored
    timeout         it ran past ``shadow.timeout_s`` and was cancelled: row stored
    budget          the team's shadow scope had no room (or could not be checked): skipped
    forbidden       ``permits`` refused every deployment of the target: skipped, never sent
    dropped_full    ``shadow.max_concurrent`` copies were already running: dropped, never sent
    primary_failed  the primary has no complete answer to compare with: not sent
    shutdown        the server stopped first: not sent, or cancelled while running
    disabled        ``shadow.enabled`` is false: not sent

``permits(ctx, deployment) -> bool`` is the data-class hook: it is asked with the *primary's*
context (whose class the copy inherits) for each deployment of an alias target; a target with
no permitted deployment is not sent. A copy refused inside the pipeline with the error code
``data_class_forbidden`` counts as ``forbidden`` too.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final

import orjson
from prometheus_client import CollectorRegistry, Counter, Gauge

from gateway.context import Origin, RequestContext
from gateway.pricing import to_nanos
from gateway.shadow.compare import INLINE_CHARS, AnswerView, Comparison, compare, tool_names

if TYPE_CHECKING:
    from gateway.catalog import Deployment
    from gateway.config.settings import ShadowSettings
    from gateway.core import Core
    from gateway.ledger import LedgerWriter
    from gateway.routing.plan import ShadowCopy

log = logging.getLogger("gateway.shadow")

#: Is this deployment allowed to receive what this (primary) request carries? (data classes)
Permits = Callable[[RequestContext, "Deployment"], bool]

OUTCOMES: Final = (
    "completed",
    "error",
    "timeout",
    "budget",
    "forbidden",
    "dropped_full",
    "primary_failed",
    "shutdown",
    "disabled",
)
PROMPT_PREFIX: Final = "prompt:"
_BUDGET_CODES: Final = frozenset({"budget_exceeded", "budget_unavailable"})
FORBIDDEN_CODE: Final = "data_class_forbidden"


def allow_all(ctx: RequestContext, deployment: Deployment) -> bool:
    """The default ``permits``: no data-class rule, every deployment may receive a copy."""
    return True


class ShadowMetrics:
    def __init__(self, registry: CollectorRegistry | None) -> None:
        self.copies = Counter(
            "gateway_shadow_copies_total",
            "Shadow copies by rule and outcome (see docs/shadow.md).",
            ("rule", "outcome"),
            registry=registry,
        )
        self.in_flight = Gauge(
            "gateway_shadow_in_flight", "Shadow copies running now.", registry=registry, multiprocess_mode="livesum"
        )


@dataclass(frozen=True, slots=True)
class _Primary:
    """What a copy keeps of its primary: the primary context itself is let go once forked."""

    request_id: str
    team: str
    alias: str | None
    status: int
    latency_ms: float
    cost_nanos: int
    answer: AnswerView
    response_format: Any


class ShadowRunner:
    """Implements ``RequestSink``. ``core`` reads the core handler (built after the runner).

    Usage::

        runner = ShadowRunner(lambda: runtime.core, settings.shadow, ShadowMetrics(registry), writer)
        record.add_sink(runner)
        ...
        await runner.close()      # at shutdown, before the ledger's final flush
    """

    def __init__(
        self,
        core: Callable[[], Core | None],
        settings: ShadowSettings,
        metrics: ShadowMetrics,
        comparisons: LedgerWriter | None,
        *,
        permits: Permits = allow_all,
    ) -> None:
        self._core = core
        self._settings = settings
        self._metrics = metrics
        self._comparisons = comparisons
        self._permits = permits
        self._tasks: set[asyncio.Task[None]] = set()
        self._closing = False
        self._counters: dict[tuple[str, str], Any] = {}

    @property
    def running(self) -> int:
        return len(self._tasks)

    def record(self, ctx: RequestContext) -> None:
        """The record stage's hand-off: start the request's copies, if it has any. Never blocks."""
        plan = ctx.plan
        if plan is None or not plan.shadows or ctx.is_shadow:
            return
        for index, copy in enumerate(plan.shadows):
            self._dispatch(ctx, copy, index)

    def _count(self, rule: str, outcome: str) -> None:
        key = (rule, outcome)
        child = self._counters.get(key)
        if child is None:
            child = self._counters[key] = self._metrics.copies.labels(rule, outcome)
        child.inc()

    def _dispatch(self, primary: RequestContext, copy: ShadowCopy, index: int) -> None:
        if not self._settings.enabled:
            self._count(copy.rule, "disabled")
            return
        if self._closing:
            self._count(copy.rule, "shutdown")
            return
        answer = primary.answer
        if primary.status >= 400 or primary.error is not None or answer is None or not answer.complete:
            self._count(copy.rule, "primary_failed")
            return
        if not self._permitted(primary, copy):
            self._count(copy.rule, "forbidden")
            return
        if len(self._tasks) >= self._settings.max_concurrent:
            self._count(copy.rule, "dropped_full")
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # finished outside a loop (a tool): nothing can run a copy
            self._count(copy.rule, "shutdown")
            return
        # Everything else (re-targeting the body, reading the primary's answer) happens in the
        # task, so that the finish path of the caller's request pays for one task creation.
        task = loop.create_task(self._run(primary, copy, index), name="shadow-copy")
        self._tasks.add(task)
        self._metrics.in_flight.inc()
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._metrics.in_flight.dec()

    def _permitted(self, primary: RequestContext, copy: ShadowCopy) -> bool:
        rule = primary.catalog.shadows.by_id.get(copy.rule)
        alias = primary.catalog.aliases.get(rule.target_alias) if rule and rule.target_alias else None
        if alias is None:
            return True  # a prompt target: its alias is known once rendered; the pipeline checks
        permits = self._permits
        return any(permits(primary, deployment) for deployment in alias.deployments)

    async def _run(self, caller: RequestContext, copy: ShadowCopy, index: int) -> None:
        outcome = "error"
        request_id = f"{caller.request_id[:48]}-shadow-{index}"
        try:
            core = self._core()
            if core is None:
                outcome = "shutdown"
                return
            primary = _snapshot(caller)
            shadow = caller.fork(Origin.SHADOW, body=_retarget(caller, copy.target), request_id=request_id)
            del caller  # the copy keeps only the snapshot of its primary
            try:
                async with asyncio.timeout(self._settings.timeout_s):
                    await core.run(shadow)
                outcome = _outcome(shadow)
            except TimeoutError:
                outcome = "timeout"
            if outcome in ("completed", "error", "timeout"):
                await self._store(shadow, copy, primary, outcome)
        except asyncio.CancelledError:
            outcome = "shutdown"
            raise
        except Exception:
            log.exception("shadow copy failed", extra={"request_id": request_id, "rule": copy.rule})
            outcome = "error"
        finally:
            self._count(copy.rule, outcome)

    async def _store(self, shadow: RequestContext, copy: ShadowCopy, primary: _Primary, outcome: str) -> None:
        comparison: Comparison | None = None
        if outcome == "completed" and shadow.answer is not None:
            mine = _view(shadow)
            if len(mine.text) + len(primary.answer.text) <= INLINE_CHARS:
                comparison = compare(primary.answer, mine, primary.response_format)
            else:
                comparison = await asyncio.to_thread(compare, primary.answer, mine, primary.response_format)
        if self._comparisons is None:
            return
        latency = shadow.elapsed_seconds if shadow.elapsed_seconds is not None else time.perf_counter() - shadow.started
        row: dict[str, Any] = {
            "ts": datetime.now(UTC),
            "rule": copy.rule[:100],
            "request_id": primary.request_id[:64],
            "shadow_request_id": shadow.request_id[:64],
            "team": primary.team[:200],
            "target": copy.target[:200],
            "primary_alias": primary.alias,
            "shadow_alias": shadow.alias.name[:200] if shadow.alias is not None else None,
            "outcome": outcome,
            "primary_status": primary.status,
            "shadow_status": shadow.status,
            "error_code": shadow.error.code[:100] if shadow.error is not None and shadow.error.code else None,
            "primary_latency_ms": primary.latency_ms,
            "shadow_latency_ms": round(latency * 1000, 3),
            "primary_cost_nanos": primary.cost_nanos,
            "shadow_cost_nanos": to_nanos(shadow.cost),
            **(comparison.as_row() if comparison is not None else _NO_COMPARISON),
        }
        self._comparisons.submit(row)

    async def idle(self) -> None:
        """Wait until no copy is running (tests, tools)."""
        while self._tasks:
            await asyncio.wait(list(self._tasks))

    async def close(self) -> None:
        """Stop sending copies, cancel those running (each records itself as cancelled), bounded."""
        self._closing = True
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=self._settings.shutdown_timeout_s)


_NO_COMPARISON: Final[dict[str, Any]] = {
    "exact_match": None,
    "length_ratio": None,
    "similarity": None,
    "json_valid": None,
    "schema_valid": None,
    "tools_match": None,
}


def _retarget(caller: RequestContext, target: str) -> dict[str, Any]:
    """The copy's body: what the caller sent, with ``model`` set to the target.

    A prompt target renders its own version from the caller's ``variables``, so it gets the
    body as sent. An alias target gets the request as it went upstream when the caller asked
    for a prompt (its rendered messages and parameters: how would this model answer it?).
    """
    if target.startswith(PROMPT_PREFIX) or caller.prompt_name is None:
        body: dict[str, Any] = orjson.loads(caller.raw_body)
    else:
        body = orjson.loads(orjson.dumps(caller.body))  # a deep copy; the primary's is left as it was
        body.pop("stream_options", None)
        if caller.include_usage:
            body["stream_options"] = {"include_usage": True}
    body["model"] = target
    return body


def _outcome(shadow: RequestContext) -> str:
    error = shadow.error
    code = error.code if error is not None else None
    if code in _BUDGET_CODES:
        return "budget"
    if code == FORBIDDEN_CODE:
        return "forbidden"
    if error is not None or shadow.status >= 400 or shadow.answer is None or not shadow.answer.complete:
        return "error"
    return "completed"


def _view(ctx: RequestContext) -> AnswerView:
    answer = ctx.answer
    if answer is None:
        return AnswerView("", ())
    return AnswerView(answer.text, tool_names(answer.tool_calls))


def _snapshot(primary: RequestContext) -> _Primary:
    elapsed = primary.elapsed_seconds if primary.elapsed_seconds is not None else time.perf_counter() - primary.started
    return _Primary(
        request_id=primary.request_id,
        team=primary.team,
        alias=primary.alias.name[:200] if primary.alias is not None else None,
        status=primary.status,
        latency_ms=round(elapsed * 1000, 3),
        cost_nanos=to_nanos(primary.cost),
        answer=_view(primary),
        response_format=primary.body.get("response_format"),
    )
