"""Prometheus metrics with bounded label values.

Label values come only from the gateway's own configuration (team names, alias names,
deployment labels) or small fixed sets (status codes): a caller sending random model names
cannot create new series. Children are cached because ``labels()`` costs microseconds on
a path that has few to spare. With several workers, prometheus-client's multiprocess mode
is used (``PROMETHEUS_MULTIPROC_DIR``, set by ``gateway serve``).

Some series are computed at scrape time by collectors of their own (``gateway_budget_used_ratio``,
``gateway_rollout_step``...), from state every worker shares (Redis, the database). The
multiprocess files know nothing of them, so with several workers a scrape adds the collectors
of the worker that answers it to the summed series (they once went missing there).
"""

from __future__ import annotations

import os
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.registry import Collector

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
OVERHEAD_BUCKETS = (0.0001, 0.00025, 0.0005, 0.00075, 0.001, 0.0015, 0.0025, 0.005, 0.01, 0.025, 0.1)


class GatewayRegistry(CollectorRegistry):
    """A registry that also remembers its scrape-time collectors (anything registered that is
    not a plain metric), for the multiprocess scrape (see the module docstring)."""

    def __init__(self) -> None:
        super().__init__(auto_describe=True)
        self.scrape_time: list[Collector] = []

    def register(self, collector: Collector) -> None:
        super().register(collector)
        if not isinstance(collector, MetricWrapperBase):
            self.scrape_time.append(collector)

    def unregister(self, collector: Collector) -> None:
        super().unregister(collector)
        if collector in self.scrape_time:
            self.scrape_time.remove(collector)


class Metrics:
    """All of the gateway's Prometheus series, on one registry (one per app, so tests can
    run several apps in one process)."""

    def __init__(self) -> None:
        self.registry = GatewayRegistry()
        r = self.registry
        self.requests = Counter(
            "gateway_requests_total", "Requests by team, model alias and status.", ("team", "model", "status"),
            registry=r,
        )
        self.latency = Histogram(
            "gateway_request_duration_seconds", "End-to-end latency (last byte).", ("model",),
            buckets=LATENCY_BUCKETS, registry=r,
        )
        self.overhead = Histogram(
            "gateway_overhead_seconds", "Gateway time excluding upstream (first byte when streaming).",
            ("endpoint",), buckets=OVERHEAD_BUCKETS, registry=r,
        )
        self.upstream = Histogram(
            "gateway_upstream_duration_seconds", "Upstream latency per attempt (first byte when streaming).",
            ("deployment", "outcome"), buckets=LATENCY_BUCKETS, registry=r,
        )
        self.tokens = Counter(
            "gateway_tokens_total", "Tokens by team, alias and direction.", ("team", "model", "direction"),
            registry=r,
        )
        self.cost = Counter("gateway_cost_usd_total", "Spend in USD.", ("team", "model"), registry=r)
        self.in_flight = Gauge(
            "gateway_in_flight_requests", "Requests being served.", registry=r, multiprocess_mode="livesum"
        )
        self.log_lines_dropped = Counter(
            "gateway_log_lines_dropped_total",
            "Log lines dropped because stderr's reader did not keep up or went away (access or log).",
            ("kind",),
            registry=r,
        )
        self.prompt_requests = Counter(
            "gateway_prompt_requests_total",
            "Requests served from a stored prompt, by prompt, version and the label it was asked by.",
            ("prompt", "version", "label"),
            registry=r,
        )
        self._children: dict[tuple[Any, ...], Any] = {}

    def child(self, metric: Any, *labels: str) -> Any:
        key = (id(metric), *labels)
        found = self._children.get(key)
        if found is None:
            found = metric.labels(*labels)
            if len(self._children) < 50_000:
                self._children[key] = found
        return found

    def render(self) -> tuple[bytes, str]:
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            from prometheus_client import multiprocess

            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
            for collector in self.registry.scrape_time:
                registry.register(collector)
            return generate_latest(registry), CONTENT_TYPE_LATEST
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
