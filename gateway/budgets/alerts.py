"""Threshold alerts and the budget feature's Prometheus series.

A budget crosses a threshold (50/80/95% by default, and 100%) at most once per period: spend
only grows within a period, so exactly one commit moves it across each threshold, and the
backend additionally *claims* each (scope, threshold, period) once (``HSETNX`` in Redis, a set
in process) so replicas and retries cannot alert twice. A crossing emits one structured log
line, increments ``gateway_budget_alerts_total`` and, when the team has a ``webhook_url``,
queues one JSON POST that a background task sends with a short timeout, never on the
request path. A full queue or a failing webhook is logged and dropped: the log line and the
counter are the record that cannot be lost.

``gateway_budget_used_ratio{team,scope}`` is spent ÷ limit of each scope in its current period.
The backends report the spend they learn at no extra cost — a settle's reply, a refusal, a
rebuild from the ledger — with :meth:`BudgetMetrics.saw_spend` (one dict write), and
:class:`UsedRatioCollector` turns the latest figures into the gauge at scrape time, against
the policy's current limits. With Redis each figure is the cluster-wide counter as of that
replica's last settle, so ``max by (team, scope)`` across replicas is the freshest; a replica
that has seen no spend of a scope in the current period reports nothing for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aiohttp
from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import GaugeMetricFamily

from gateway.budgets.policy import Scope, TeamBudget, Window
from gateway.pricing import from_nanos

log = logging.getLogger("gateway.budget")

_WEBHOOK_QUEUE = 1000


class BudgetMetrics:
    def __init__(self, registry: CollectorRegistry | None) -> None:
        self.alerts = Counter(
            "gateway_budget_alerts_total", "Budget threshold crossings (one per threshold per period).",
            ("team", "scope", "threshold"), registry=registry,
        )
        self.rejections = Counter(
            "gateway_budget_rejections_total", "Requests refused by a hard budget.", ("team", "scope"),
            registry=registry,
        )
        self.reconciled = Counter(
            "gateway_budget_reconciled_total", "Reservations of dead requests charged at their worst case.",
            ("team",), registry=registry,
        )
        self.unavailable = Counter(
            "gateway_budget_unavailable_total",
            "Budget checks that could not reach the counters (hard: 503, soft: admitted).",
            ("team", "outcome"), registry=registry,
        )
        self.rebuilds = Counter(
            "gateway_budget_rebuilds_total", "Budget counters rebuilt from the ledger.", ("team",), registry=registry,
        )
        self.webhook_failures = Counter(
            "gateway_budget_webhook_failures_total", "Alert webhooks that failed or were dropped.", registry=registry,
        )
        # (team, scope kind, scope name) -> (start of the period, spent nano-USD), the latest seen.
        self.spend_seen: dict[tuple[str, str, str], tuple[datetime, int]] = {}

    def saw_spend(self, team: str, scope: Scope, window: Window, spent_nanos: int) -> None:
        """Remember a scope's committed spend (one dict write, called on every settle)."""
        self.spend_seen[(team, scope.kind, scope.name)] = (window.start, spent_nanos)


class UsedRatioCollector:
    """``gateway_budget_used_ratio``, computed at scrape time from the spend the backends saw."""

    def __init__(self, metrics: BudgetMetrics, budgets: Callable[[], Mapping[str, TeamBudget]]) -> None:
        self._seen = metrics.spend_seen
        self._budgets = budgets

    def describe(self) -> list[Any]:
        return []  # collected on scrape only (no duplicate-name checks at registration)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "gateway_budget_used_ratio",
            "Spent / limit of each budget scope in its current period (1 = the limit), as of this replica's last "
            "settle; take the max across replicas.",
            labels=["team", "scope"],
        )
        now = datetime.now(UTC)
        for team, budget in self._budgets().items():
            start = budget.window(now).start
            for scope in budget.all_scopes():
                seen = self._seen.get((team, scope.kind, scope.name))
                if seen is None or seen[0] != start:
                    continue  # no spend seen in this period (a new period, or a restart)
                spent = seen[1]
                ratio = spent / scope.limit_nanos if scope.limit_nanos > 0 else float(spent > 0)
                family.add_metric([team, scope.label], ratio)
        yield family


@dataclass(frozen=True, slots=True)
class AlertEvent:
    team: str
    scope: str  # "team", "key:key_…", "alias:gpt-4o"
    threshold_pct: float
    spent_nanos: int
    limit_nanos: int
    hard: bool
    window: Window

    def payload(self) -> dict[str, Any]:
        return {
            "event": "budget.threshold",
            "team": self.team,
            "scope": self.scope,
            "threshold_pct": self.threshold_pct,
            "spent_usd": round(from_nanos(self.spent_nanos), 9),
            "limit_usd": round(from_nanos(self.limit_nanos), 9),
            "hard": self.hard,
            "period": self.window.period,
            "period_start": self.window.start.isoformat().replace("+00:00", "Z"),
            "resets_at": self.window.resets_at,
        }


def crossings(limit_nanos: int, thresholds: tuple[float, ...], before: int, after: int) -> list[float]:
    """Thresholds (percent) that ``before → after`` moved across, in integer arithmetic."""
    if after <= before:
        return []
    if limit_nanos <= 0:  # a zero budget: the first spend crosses every threshold
        return list(thresholds) if before <= 0 else []
    return [pct for pct in thresholds if before * 100 < limit_nanos * pct <= after * 100]


class Alerts:
    """Emits claimed alerts: log line, counter, and a queued webhook POST."""

    def __init__(self, metrics: BudgetMetrics, *, webhook_timeout_s: float) -> None:
        self.metrics = metrics
        self._timeout = aiohttp.ClientTimeout(total=webhook_timeout_s)
        self._queue: asyncio.Queue[tuple[str, dict[str, Any]]] = asyncio.Queue(_WEBHOOK_QUEUE)
        self._task: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None

    def fire(self, budget: TeamBudget, scope: Scope, pct: float, spent_nanos: int, window: Window) -> None:
        event = AlertEvent(budget.team, scope.label, pct, spent_nanos, scope.limit_nanos, scope.hard, window)
        payload = event.payload()
        log.warning("budget threshold crossed", extra={k: v for k, v in payload.items() if k != "event"})
        self.metrics.alerts.labels(budget.team, scope.label, f"{pct:g}").inc()
        if budget.webhook_url:
            try:
                self._queue.put_nowait((budget.webhook_url, payload))
            except asyncio.QueueFull:
                self.metrics.webhook_failures.inc()
                log.error("budget webhook queue full; alert not posted", extra={"team": budget.team})

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="budget-webhooks")

    async def close(self) -> None:
        if self._task is not None:
            # Give queued alerts one webhook timeout to go out, then stop.
            try:
                async with asyncio.timeout(self._timeout.total or 1.0):
                    await self._queue.join()
            except TimeoutError:
                log.warning("budget webhooks still queued at shutdown", extra={"count": self._queue.qsize()})
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _run(self) -> None:
        while True:
            url, payload = await self._queue.get()
            try:
                await self._post(url, payload)
            finally:
                self._queue.task_done()

    async def _post(self, url: str, payload: dict[str, Any]) -> None:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        try:
            async with self._session.post(url, json=payload) as response:
                if response.status >= 300:
                    self.metrics.webhook_failures.inc()
                    log.error("budget webhook refused", extra={"status": response.status, "team": payload["team"]})
        except (aiohttp.ClientError, TimeoutError) as exc:
            self.metrics.webhook_failures.inc()
            log.error("budget webhook failed", extra={"error": type(exc).__name__, "team": payload["team"]})
