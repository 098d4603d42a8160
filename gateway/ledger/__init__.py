"""The durable cost ledger: one row per request, written in batches off the request path.

``build_ledger`` is the feature's factory: it starts the writer task in the running loop and
returns the writer, the record stage's sink, and the final flush as a shutdown step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from gateway.features import Feature
from gateway.ledger.sink import KINDS, LedgerSink, kind_of, ledger_row
from gateway.ledger.writer import LedgerMetrics, LedgerWriter

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from gateway.config.settings import LedgerSettings
    from gateway.storage import Database

__all__ = [
    "KINDS", "LedgerFeature", "LedgerMetrics", "LedgerSink", "LedgerWriter", "build_ledger", "kind_of", "ledger_row",
]


@dataclass
class LedgerFeature(Feature):
    writer: LedgerWriter | None = None
    sink: LedgerSink | None = None


def build_ledger(db: Database, settings: LedgerSettings, registry: CollectorRegistry) -> LedgerFeature:
    """The ledger's writer (started: call inside the running event loop) and its sink."""
    writer = LedgerWriter(db, settings, metrics=LedgerMetrics(registry))
    writer.start()
    # The flush runs before storage and Redis close (closers run in reverse order).
    return LedgerFeature(closers=[writer.close], writer=writer, sink=LedgerSink(writer))
