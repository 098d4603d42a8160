"""Structured JSON logs, one object per line, with secrets scrubbed from every message.

Records are formatted where they are logged and written by the stderr writer thread
(``gateway.observe.lines``): a slow reader of stderr never blocks the event loop, even when an
upstream outage makes every request log a warning. Lines it had to drop are counted in
``gateway_log_lines_dropped_total{kind="log"}`` once the server's metrics exist.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import orjson

from gateway.observe.lines import DropCounter, LineWriter, stderr_lines
from gateway.redact import redact

# Attributes every LogRecord has; anything else was passed with `extra=` and is logged.
_STANDARD = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": redact(record.getMessage()),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = redact(value) if isinstance(value, str) else value
        if record.exc_info:
            entry["exc"] = redact(self.formatException(record.exc_info))
        # Scrubbed again as a whole: an `extra` that is not a string (a dict, an exception)
        # is only turned into text here.
        return redact(orjson.dumps(entry, default=str).decode())


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


class LineHandler(logging.Handler):
    """Hands each formatted record to a ``LineWriter`` (stderr's by default); never blocks."""

    def __init__(self, writer: LineWriter | None = None) -> None:
        super().__init__()
        self._writer = writer or stderr_lines()
        self.on_drop: DropCounter | None = None

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record).encode("utf-8", "backslashreplace") + b"\n"
        except Exception:
            self.handleError(record)
            return
        self._writer.put(line, 1, self.on_drop)

    def flush(self) -> None:
        self._writer.drain(2.0)


def count_dropped_lines(on_drop: DropCounter) -> None:
    """Count the log lines stderr's writer drops from now on (the server's metrics call this)."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler, LineHandler):
            handler.on_drop = on_drop


def configure_logging(level: str = "info", fmt: str = "json") -> None:
    handler = LineHandler()
    handler.setFormatter(
        JsonFormatter() if fmt == "json" else TextFormatter("%(asctime)s %(levelname)s %(name)s %(message)s")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("uvicorn.access", "aiosqlite", "LiteLLM", "litellm", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
