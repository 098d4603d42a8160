"""What the analysis tells the outside world: Prometheus counters and gauges, and a webhook on rollback.

A rollback is also an ERROR log line (``gateway.rollouts``, "rollout rolled back") and an
audit entry carrying the failed checks' numbers (``rollout.abort`` by ``rollout-controller``).
The webhook is POSTed off the request path and off the analysis loop, from a bounded queue;
a failing webhook is logged and counted, never retried forever.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import aiohttp
from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import GaugeMetricFamily

if TYPE_CHECKING:
    from gateway.catalog import Catalog
    from gateway.rollouts.analysis import Analysis
    from gateway.rollouts.book import RolloutBook
    from gateway.rollouts.model import Rollout

log = logging.getLogger("gateway.rollouts")

_QUEUE = 1000


class RolloutAlerts:
    def __init__(self, registry: CollectorRegistry | None, *, webhook_timeout_s: float = 5.0) -> None:
        self.decisions = Counter("gateway_rollout_checks_total", "Rollout analysis checks by verdict and action.",
                                 ("rollout", "verdict", "action"), registry=registry)
        self.rollbacks = Counter("gateway_rollout_rollbacks_total", "Rollouts rolled back by the analysis.",
                                 ("rollout",), registry=registry)
        self.webhook_failures = Counter("gateway_rollout_webhook_failures_total",
                                        "Rollback webhooks that failed or were dropped.", registry=registry)
        self.leader = Gauge("gateway_rollout_controller_leading",
                            "1 while this process holds the rollout controller lease (runs the analysis).",
                            registry=registry, multiprocess_mode="livesum")
        self._timeout = aiohttp.ClientTimeout(total=webhook_timeout_s)
        self._queue: asyncio.Queue[tuple[str, dict[str, Any]]] = asyncio.Queue(_QUEUE)
        self._task: asyncio.Task[None] | None = None

    def decided(self, rollout: Rollout, action: str, verdict: str) -> None:
        self.decisions.labels(rollout.id, verdict, action).inc()

    def leading(self, held: bool) -> None:
        self.leader.set(1.0 if held else 0.0)

    def rolled_back(self, rollout: Rollout, analysis: Analysis) -> None:
        self.rollbacks.labels(rollout.id).inc()
        url = rollout.spec.webhook_url
        if not url:
            return
        payload = {"event": "rollout.rolled_back", "rollout": rollout.id, "kind": rollout.kind,
                   "at": datetime.now(UTC).isoformat(), **analysis.as_dict()}
        try:
            self._queue.put_nowait((url, payload))
        except asyncio.QueueFull:
            self.webhook_failures.inc()
            log.error("rollout webhook queue full; alert not posted", extra={"rollout": rollout.id})
            return
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="rollout-webhooks")

    async def close(self) -> None:
        if self._task is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._timeout.total or 1.0):
                    await self._queue.join()
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        async with aiohttp.ClientSession(timeout=self._timeout) as session:
            while True:
                url, payload = await self._queue.get()
                try:
                    async with session.post(url, json=payload) as response:
                        if response.status >= 300:
                            self.webhook_failures.inc()
                            log.error("rollout webhook refused", extra={"status": response.status,
                                                                         "rollout": payload["rollout"]})
                except (aiohttp.ClientError, TimeoutError) as exc:
                    self.webhook_failures.inc()
                    log.error("rollout webhook failed", extra={"error": type(exc).__name__,
                                                               "rollout": payload["rollout"]})
                finally:
                    self._queue.task_done()


class RolloutCollector:
    """Per-rollout gauges, read at scrape time from the replica's book (the stored state, so
    every replica reports the same): the canary weight, the step, the status, and the last
    check's numbers per variant."""

    def __init__(self, book: RolloutBook, catalog: Callable[[], Catalog]) -> None:
        self._book = book
        self._catalog = catalog

    def describe(self) -> list[Any]:
        return []  # collected on scrape only (no duplicate-name checks at registration)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        from gateway.rollouts.state import STATUSES, initial_state

        weight = GaugeMetricFamily("gateway_rollout_weight_percent", "The canary's share of the matching traffic.",
                                   labels=["rollout"])
        step = GaugeMetricFamily("gateway_rollout_step", "The rollout's current step (0-based).", labels=["rollout"])
        status = GaugeMetricFamily("gateway_rollout_status", "1 for the rollout's current status.",
                                   labels=["rollout", "status"])
        window = GaugeMetricFamily("gateway_rollout_last_check", "The last check's numbers per variant.",
                                   labels=["rollout", "variant", "number"])
        for rollout in self._catalog().rollouts.by_id.values():
            state = self._book.state(rollout.id) or initial_state(rollout)
            weight.add_metric([rollout.id], (self._book.weight(rollout) or 0.0) * 100)
            step.add_metric([rollout.id], state.step)
            for name in STATUSES:
                status.add_metric([rollout.id, name], 1.0 if state.status == name else 0.0)
            last = state.history[-1] if state.history else {}
            for variant, numbers in (last.get("variants") or {}).items():
                for number in ("requests", "errors", "error_rate", "p95_ms", "p99_ms", "cost_per_request"):
                    if isinstance(numbers.get(number), int | float):
                        window.add_metric([rollout.id, variant, number], float(numbers[number]))
        yield from (weight, step, status, window)
