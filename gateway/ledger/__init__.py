"""The durable cost ledger: one row per request, written in batches off the request path.

``start_ledger(runtime)`` is the whole wiring: it adds the sink to the record stage, starts
the writer task in the running loop, and registers the flush as a shutdown step.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from gateway.ledger.sink import KINDS, LedgerSink, kind_of, ledger_row
from gateway.ledger.writer import LedgerMetrics, LedgerWriter

if TYPE_CHECKING:
    from gateway.runtime import Runtime

__all__ = ["KINDS", "LedgerMetrics", "LedgerSink", "LedgerWriter", "kind_of", "ledger_row", "start_ledger"]


def start_ledger(runtime: Runtime) -> LedgerWriter:
    """Wire the ledger into a runtime being built (call inside the running event loop)."""
    writer = LedgerWriter(
        runtime.db, runtime.settings.ledger, metrics=LedgerMetrics(runtime.metrics.registry)
    )
    writer.start()
    runtime.record.add_sink(LedgerSink(writer))
    # Closers run in reverse order, so this flush runs before storage and Redis close.
    runtime.closers.append(writer.close)
    return writer
