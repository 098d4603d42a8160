"""Reading what a gateway sent the local Langfuse receiver, in tests."""

from __future__ import annotations

import time

from gateway.testing.langfuse_receiver import LangfuseReceiver, ReceivedSpan


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
