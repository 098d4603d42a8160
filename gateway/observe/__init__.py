"""Stage 1, record: metrics, structured logs, and the hand-off to the ledger and tracing."""

from gateway.observe.logs import configure_logging
from gateway.observe.metrics import Metrics
from gateway.observe.stage import Record, RequestSink

__all__ = ["Metrics", "Record", "RequestSink", "configure_logging"]
