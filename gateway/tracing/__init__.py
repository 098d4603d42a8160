"""Tracing every request to Langfuse and/or any OTLP endpoint, off the request path.

``build_tracing`` is the feature's factory. With neither Langfuse (host and keys) nor an OTLP
endpoint configured it returns ``None`` and nothing is imported or started. Otherwise it
returns the exporter, whose ``start`` the record stage calls as each request begins (the trace
id, returned as ``x-gateway-trace-id``) and whose ``record`` it calls as each ends, the prompt
mirror (Langfuse only, given storage), and the shutdown steps that send what is still queued
within ``tracing.shutdown_timeout_s``.

Pieces: ``exporter`` (queue, sampling, export), ``spans`` (a request as a span), ``otlp`` (the
protobuf encoding), ``policy`` (per team and alias), ``redaction`` and ``maskers`` (what of
the content may leave), ``prompt_mirror`` (prompt versions into Langfuse prompt management).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from gateway.features import Closer, Feature

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from gateway.config.settings import TracingSettings
    from gateway.storage import Database
    from gateway.tracing.exporter import TraceExporter
    from gateway.tracing.prompt_mirror import PromptMirror

__all__ = ["TracingFeature", "build_tracing"]


@dataclass
class TracingFeature(Feature):
    exporter: TraceExporter | None = None
    mirror: PromptMirror | None = None


def build_tracing(
    settings: TracingSettings, registry: CollectorRegistry, *, db: Database | None = None
) -> TracingFeature | None:
    """The tracing feature (its tasks started: call inside the running loop), or None when off."""
    if not settings.enabled:
        return None
    from prometheus_client import Counter, Gauge

    from gateway.tracing.exporter import exporter_for

    dropped = Counter(
        "gateway_trace_spans_dropped_total",
        "Request traces not delivered, by reason (queue_full, export_failed, shutdown) and destination "
        "(langfuse, otlp).",
        ("reason", "destination"), registry=registry,
    )
    exported = Counter(
        "gateway_trace_spans_exported_total", "Request traces a destination accepted.", ("destination",),
        registry=registry,
    )
    mirror: PromptMirror | None = None
    if db is not None and settings.langfuse and settings.mirror_prompts:
        from gateway.tracing.prompt_mirror import PromptMirror

        mirrored = Counter(
            "gateway_prompt_mirror_total",
            "Prompt versions and label moves sent to Langfuse prompt management, by kind (version, label) and "
            "outcome (mirrored, failed: retried later).",
            ("kind", "outcome"), registry=registry,
        )
        mirror = PromptMirror(settings, db, mirrored=mirrored)
    depth = Gauge(
        "gateway_trace_queue_depth", "Finished requests waiting to be exported as traces (built or not); "
        "at tracing.queue_size new ones are dropped.", registry=registry, multiprocess_mode="livesum",
    )
    exporter = exporter_for(settings, dropped=dropped, exported=exported, depth=depth,
                            prompt_versions=mirror.langfuse_version if mirror is not None else None)
    exporter.start_task()
    closers: list[Closer] = [exporter.close]
    if mirror is not None:
        mirror.start()
        closers.insert(0, mirror.close)
    return TracingFeature(
        closers=closers, catalog_listeners=[exporter.policies.forget], exporter=exporter, mirror=mirror
    )
