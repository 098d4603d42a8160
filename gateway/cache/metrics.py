"""The cache's Prometheus series, registered on the gateway's registry.

Label values are bounded: teams come from configuration, results and operations from the
small fixed sets below. The request path's children are looked up once and their ``inc``
kept (``labels()`` costs microseconds per call); rare ones go through ``Metrics.child``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

from prometheus_client import Counter, Gauge

from gateway.observe import Metrics

RESULTS = ("hit", "miss", "bypass")
OPERATIONS = ("lookup", "wait", "store", "release", "probe")
_MAX_CHILDREN: Final = 10_000  # teams come from configuration: a bound that is never reached


class CacheMetrics:
    def __init__(self, metrics: Metrics, backend: str) -> None:
        r = metrics.registry
        self._metrics = metrics
        self.backend = backend
        self.requests = Counter(
            "gateway_cache_requests_total",
            "Cache outcome per request: hit, miss (asked upstream, may store) or bypass (cache not used).",
            ("team", "result"),
            registry=r,
        )
        self.errors = Counter(
            "gateway_cache_errors_total",
            "Cache backend operations that failed or timed out (the request went on without the cache).",
            ("backend", "op"),
            registry=r,
        )
        self.stored_bytes = Counter(
            "gateway_cache_stored_bytes_total", "Bytes written to the cache backend.", ("backend",), registry=r
        )
        self.entries_bytes = Gauge(
            "gateway_cache_memory_bytes",
            "Bytes held by the in-process cache store.",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.evictions = Counter(
            "gateway_cache_evictions_total", "Entries evicted from the in-process store to stay in its bound.",
            registry=r,
        )
        self.saved = Counter(
            "gateway_cache_saved_usd_total", "Upstream cost avoided by cache hits (USD).", ("team",), registry=r
        )
        self.breaker_open = Gauge(
            "gateway_cache_breaker_open",
            "1 while the cache's Redis circuit breaker is open (cache bypassed), else 0.",
            registry=r,
            multiprocess_mode="max",
        )
        self.breaker_changes = Counter(
            "gateway_cache_breaker_transitions_total", "Circuit breaker state changes.", ("state",), registry=r
        )
        # The request path's children, bound once: ``labels()`` costs microseconds per call.
        self._result_incs: dict[tuple[str, str], Callable[..., None]] = {}
        self._saved_incs: dict[str, Callable[..., None]] = {}
        self._stored_inc = self.stored_bytes.labels(backend).inc
        # Process-local tallies for the admin stats endpoint (Prometheus holds the real series).
        self.tally = dict.fromkeys(RESULTS, 0)
        self.error_count = 0
        self.bytes_written = 0

    def result(self, team: str, result: str) -> None:
        self.tally[result] += 1
        inc = self._result_incs.get((team, result))
        if inc is None:
            inc = self._remember(self._result_incs, (team, result), self.requests.labels(team, result).inc)
        inc()

    def error(self, op: str) -> None:
        self.error_count += 1
        self._metrics.child(self.errors, self.backend, op).inc()

    def stored(self, size: int) -> None:
        self.bytes_written += size
        self._stored_inc(size)

    def saved_cost(self, team: str, usd: float) -> None:
        if usd:
            inc = self._saved_incs.get(team)
            if inc is None:
                inc = self._remember(self._saved_incs, team, self.saved.labels(team).inc)
            inc(usd)

    @staticmethod
    def _remember(table: dict[Any, Callable[..., None]], key: Any, inc: Callable[..., None]) -> Callable[..., None]:
        if len(table) < _MAX_CHILDREN:
            table[key] = inc
        return inc

    def breaker(self, open_: bool) -> None:
        self.breaker_open.set(1 if open_ else 0)
        self.breaker_changes.labels("open" if open_ else "closed").inc()
