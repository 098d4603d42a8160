"""The access log: one JSON line per request, written in batches off the request path.

Going through ``logging`` cost more than the rest of the pipeline together (LogRecord
construction, a formatter walking every attribute, a regex per value to scrub secrets, a
write per line). Access lines are built here from fields the gateway itself controls (ids
it generated or validated, names from its configuration, numbers), so they need no
scrubbing: each is one ``orjson.dumps`` into a buffer, handed every 100 ms (or when the buffer
is large) to the stderr writer thread (``gateway.observe.lines``), which never makes a request
wait: a stalled reader costs lines, counted in ``gateway_log_lines_dropped_total{kind="access"}``.
A crash can lose at most the last interval's lines; shutdown flushes (``close``).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson

from gateway.observe.lines import DropCounter, LineWriter, stderr_lines

_PREFIX_LEVEL = {"level": "info", "logger": "gateway.access", "msg": "request"}


class AccessLog:
    def __init__(
        self,
        writer: LineWriter | None = None,
        *,
        flush_interval_s: float = 0.1,
        max_buffer_bytes: int = 64 * 1024,
        on_drop: DropCounter | None = None,
    ) -> None:
        self._interval = flush_interval_s
        self._max = max_buffer_bytes
        self._parts: list[bytes] = []
        self._size = 0
        self._timer: asyncio.TimerHandle | None = None
        self._second = -1
        self._second_text = ""
        # Standard error's writer by default, shared with ``logging``: one writer, one order.
        self._writer = writer or stderr_lines()
        self._on_drop = on_drop

    def _timestamp(self, now: float) -> str:
        second = int(now)
        if second != self._second:
            self._second = second
            self._second_text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return f"{self._second_text}.{int((now - second) * 1000):03d}Z"

    def write(self, fields: dict[str, Any]) -> None:
        entry = {"ts": self._timestamp(time.time()), **_PREFIX_LEVEL, **fields}
        line = orjson.dumps(entry, option=orjson.OPT_APPEND_NEWLINE)
        self._parts.append(line)
        self._size += len(line)
        if self._size >= self._max:
            self.flush()
        elif self._timer is None:
            try:
                self._timer = asyncio.get_running_loop().call_later(self._interval, self.flush)
            except RuntimeError:  # no loop (a CLI or test calling outside the server)
                self.flush()

    def flush(self) -> None:
        """Hand the buffered lines to the writer thread; never blocks."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._parts:
            return
        data = b"".join(self._parts)
        lines = len(self._parts)
        self._parts.clear()
        self._size = 0
        self._writer.put(data, lines, self._on_drop)

    def close(self, timeout_s: float = 5.0) -> None:
        """Flush and wait (up to ``timeout_s``) until every line is written; blocks, so at shutdown."""
        self.flush()
        self._writer.drain(timeout_s)
