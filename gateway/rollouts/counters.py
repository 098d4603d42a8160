"""Per-variant request and error counters, from every finished request in a rollout.

A ``RequestSink`` of the record stage: ``gateway_rollout_requests_total{rollout,variant}`` and
``gateway_rollout_errors_total{rollout,variant}``, counted the way the analysis counts them
(``gateway.rollouts.analysis``): answered requests only (no cache hits, budget refusals,
cancellations or shadow copies), errors being 5xx (timeouts included) and streams cut short;
a caller's 4xx does not count against a variant. Label values come from the applied policies
(rollout ids) and a fixed pair (``stable``, ``canary``), so the series are bounded.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter

from gateway.ledger.sink import kind_of

if TYPE_CHECKING:
    from gateway.context import RequestContext

_COUNTED = frozenset({"request", "error", "cut"})


class VariantCounters:
    __slots__ = ("_children", "errors", "requests")

    def __init__(self, registry: CollectorRegistry | None) -> None:
        self.requests = Counter(
            "gateway_rollout_requests_total",
            "Answered requests in a rollout, per variant.",
            ("rollout", "variant"),
            registry=registry,
        )
        self.errors = Counter(
            "gateway_rollout_errors_total",
            "Requests in a rollout answered 5xx or cut short, per variant.",
            ("rollout", "variant"),
            registry=registry,
        )
        self._children: dict[tuple[str, str], tuple[Any, Any]] = {}

    def record(self, ctx: RequestContext) -> None:
        rollout, variant = ctx.rollout_id, ctx.variant
        if rollout is None or variant is None:
            return
        kind = kind_of(ctx)
        if kind not in _COUNTED:
            return
        key = (rollout, variant)
        pair = self._children.get(key)
        if pair is None:
            pair = self._children[key] = (self.requests.labels(rollout, variant), self.errors.labels(rollout, variant))
        pair[0].inc()
        if ctx.status >= 500 or kind == "cut":
            pair[1].inc()
