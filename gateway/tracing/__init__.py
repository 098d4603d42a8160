"""Tracing every request to Langfuse, off the request path (see ``exporter`` and ``spans``).

``build_tracing`` is the feature's factory. With no ``tracing:`` host and keys it returns
``None`` and nothing is imported or started. Otherwise it returns the exporter, whose
``start`` the record stage calls as each request begins (the trace id, returned as
``x-gateway-trace-id``) and whose ``record`` it calls as each ends, and the shutdown step that
sends what is still queued within ``tracing.shutdown_timeout_s``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from gateway.features import Feature

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from gateway.config.settings import TracingSettings
    from gateway.tracing.exporter import TraceExporter

__all__ = ["TracingFeature", "build_tracing"]


@dataclass
class TracingFeature(Feature):
    exporter: TraceExporter | None = None


def build_tracing(settings: TracingSettings, registry: CollectorRegistry) -> TracingFeature | None:
    """The tracing feature (its export task started: call inside the running loop), or None when off."""
    if not settings.enabled:
        return None
    from prometheus_client import Counter

    from gateway.tracing.exporter import TraceExporter

    dropped = Counter(
        "gateway_trace_spans_dropped_total",
        "Request traces not delivered to Langfuse, by reason (queue_full, export_failed, shutdown).",
        ("reason",), registry=registry,
    )
    exported = Counter(
        "gateway_trace_spans_exported_total", "Request traces Langfuse accepted.", registry=registry
    )
    exporter = TraceExporter(settings, dropped=dropped, exported=exported)
    exporter.start_task()
    return TracingFeature(closers=[exporter.close], exporter=exporter)
