"""Reading what a gateway sent the local Langfuse receiver, in tests."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from gateway.testing.langfuse_receiver import LangfuseReceiver, ReceivedSpan
from support.gateway_proc import GatewayConfig, GatewayProcess


def one_span(receiver: LangfuseReceiver, trace_id: str, timeout: float = 5.0) -> ReceivedSpan:
    """The one span of trace ``trace_id``, waiting up to ``timeout`` for it (a duplicate fails)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [span for span in receiver.spans() if span.trace_id == trace_id]
        if found:
            time.sleep(0.05)  # a duplicate would arrive with the same batch or the next
            found = [span for span in receiver.spans() if span.trace_id == trace_id]
            assert len(found) == 1, f"one span per trace, got {len(found)}"
            return found[0]
        time.sleep(0.02)
    raise AssertionError(f"no span for trace {trace_id}")


def traced_gateway(
    root: Path, upstream: str, receiver: LangfuseReceiver, *, models: dict[str, Any] | None = None,
    teams: dict[str, Any] | None = None, **tracing: object,
) -> GatewayProcess:
    """A gateway in ``root`` (SQLite, not started) tracing to ``receiver``, exporting every 20 ms;
    ``tracing`` overrides or adds settings of its ``tracing:`` section."""
    settings = {
        "host": receiver.url, "public_key": receiver.public_key, "secret_key": "${TEST_LANGFUSE_SECRET}",
        "environment": "test", "flush_interval_ms": 20, "timeout_s": 0.5, "shutdown_timeout_s": 1.0, **tracing,
    }
    proc = GatewayProcess(GatewayConfig(
        root=root, upstream=upstream, database_url=f"sqlite:///{root / 'gateway.db'}", models=models or {},
        teams=teams or {}, extra={"tracing": settings},
    ))
    proc.env["TEST_LANGFUSE_SECRET"] = receiver.secret_key
    return proc
