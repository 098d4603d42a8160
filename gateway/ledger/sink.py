"""The ledger's request sink: a finished request becomes one row on the write queue.

``LedgerSink.record`` runs in the record stage's finisher, on the event loop, after the
inner finishers have priced the request (``ctx.cost``) and settled its budget. It builds a
plain dict in a few microseconds and hands it to the writer without awaiting anything; the
database sees the row later, in a batch (``gateway.ledger.writer``).

What is *not* a row: a request without a principal (no or a bad API key, a 401). Nobody can
be charged for it, it cost nothing upstream, and recording it would let anyone with network
access grow the table at will. Those requests are still counted in the request metrics and
the access log.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any, Final, Protocol

from gateway.context import RequestContext
from gateway.pricing import to_nanos

#: Every value of ``ledger.kind``; reports group and filter by it. "reconciled" rows are not
#: written here but by the budget feature, for reservations whose request died with its process.
KINDS: Final = ("request", "cache_hit", "rejected", "cancelled", "cut", "error", "shadow", "reconciled")

CLIENT_CLOSED: Final = 499  # the server marks a caller that went away mid-answer with nginx's 499

# Column widths from gateway.storage.schema.ledger. PostgreSQL refuses longer strings, and the
# only caller-controlled value (``user``) must never make a whole batch fail, so values are cut.
_USER_MAX: Final = 200
_SHORT_MAX: Final = 200
_DEPLOYMENT_MAX: Final = 300
_CODE_MAX: Final = 100


class RowQueue(Protocol):
    def submit(self, row: dict[str, Any]) -> bool:
        """Queue a row without blocking; ``False`` when it was dropped."""
        ...


def kind_of(ctx: RequestContext) -> str:
    """What sort of ledger row a finished request is; the first matching rule wins.

    Shadow copies come first because a shadow call can also fail or be cancelled, and finance
    must still be able to tell shadow spend apart from spend that answered a caller.
    """
    if ctx.is_shadow:
        return "shadow"
    if ctx.cache_status == "HIT":
        return "cache_hit"
    if ctx.budget_status == "rejected":
        return "rejected"
    if ctx.status == CLIENT_CLOSED:
        return "cancelled"
    if ctx.error is not None and ctx.error.code == "server_shutting_down":
        return "cut"  # a stream the server cut short when it stopped: not a complete answer
    if ctx.status >= 400 or ctx.error is not None:
        return "error"
    return "request"


def _cut(value: str | None, limit: int) -> str | None:
    return value if value is None or len(value) <= limit else value[:limit]


def ledger_row(ctx: RequestContext) -> dict[str, Any] | None:
    """The ledger row for a finished request, or ``None`` when there is nobody to charge.

    ``ts`` is when the request finished (a stream's last byte), which is also when its spend
    is committed against the budget, so calendar periods agree between budgets and reports.
    Money is integer nano-USD through ``to_nanos``, the one rounding budgets use too.
    """
    principal = ctx.principal
    if principal is None:
        return None
    usage = ctx.usage
    deployment = ctx.deployment
    alias = ctx.alias
    error = ctx.error
    user = ctx.user if isinstance(ctx.user, str) else None
    elapsed = ctx.elapsed_seconds if ctx.elapsed_seconds is not None else time.perf_counter() - ctx.started
    return {
        "ts": datetime.now(UTC),
        "request_id": ctx.request_id[:64],
        "team": principal.team,
        "key_id": principal.key_id,
        "user": _cut(user, _USER_MAX),
        "alias": _cut(alias.name, _SHORT_MAX) if alias is not None else None,
        "deployment": _cut(deployment.label, _DEPLOYMENT_MAX) if deployment is not None else None,
        "model": _cut(deployment.model, _SHORT_MAX) if deployment is not None else None,
        "prompt_name": _cut(ctx.prompt_name, _SHORT_MAX),
        "prompt_version": ctx.prompt_version,
        "variant": _cut(ctx.variant, 100),
        "rollout_id": _cut(ctx.rollout_id, 100),
        "kind": kind_of(ctx),
        "status": ctx.status,
        "prompt_tokens": usage.prompt_tokens if usage is not None else 0,
        "completion_tokens": usage.completion_tokens if usage is not None else 0,
        "cost_nanos": to_nanos(ctx.cost),
        "saved_nanos": to_nanos(ctx.saved_cost),
        "latency_ms": round(elapsed * 1000, 3),
        "error_code": _cut(error.code, _CODE_MAX) if error is not None else None,
        "trace_id": ctx.trace_id,
        "data_class": ctx.data_class,
        "served_alias": _cut(deployment.alias, _SHORT_MAX) if deployment is not None else None,
        "downgraded_from": _cut(ctx.downgraded_from, _SHORT_MAX),
    }


class LedgerSink:
    """The record stage's hand-off to the ledger (a ``gateway.observe.RequestSink``).

    Usage::

        writer = LedgerWriter(db, settings.ledger, metrics=LedgerMetrics(registry))
        record.add_sink(LedgerSink(writer))
    """

    __slots__ = ("_queue",)

    def __init__(self, queue: RowQueue) -> None:
        self._queue = queue

    def record(self, ctx: RequestContext) -> None:
        row = ledger_row(ctx)
        if row is not None:
            self._queue.submit(row)
