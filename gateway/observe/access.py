"""The access log: one JSON line per request, written in batches off the request path.

Going through ``logging`` cost more than the rest of the pipeline together (LogRecord
construction, a formatter walking every attribute, a regex per value to scrub secrets, a
write per line). Access lines are built here from fields the gateway itself controls (ids
it generated or validated, names from its configuration, numbers), so they need no
scrubbing: each is one ``orjson.dumps`` into a buffer, handed on per interval or when the
buffer is large.

The writing itself happens on a thread of its own at the lowest CPU priority. A ``write`` to
stderr blocks when its reader is slow (a pipe into a stalled log shipper, a terminal paused
with Ctrl-S); on the event loop that would freeze every request. Here only the thread waits,
lines pile up to ``max_pending_bytes``, and beyond that they are dropped and counted
(``gateway_access_log_lines_dropped_total``): the access log is fail-open, requests never wait
for it. A crash can lose at most the last interval's lines; shutdown flushes (``close``).
"""

from __future__ import annotations

import asyncio
import os
import select
import threading
import time
from collections.abc import Callable
from typing import Any

import orjson

from gateway.threads import lower_priority

_ATOMIC_BYTES = getattr(select, "PIPE_BUF", 512)
_PREFIX_LEVEL = {"level": "info", "logger": "gateway.access", "msg": "request"}


class AccessLog:
    def __init__(
        self,
        fd: int = 2,
        *,
        flush_interval_s: float = 0.1,
        max_buffer_bytes: int = 64 * 1024,
        max_pending_bytes: int = 8 * 1024 * 1024,
        on_drop: Callable[[int], None] | None = None,
    ) -> None:
        self._interval = flush_interval_s
        self._max = max_buffer_bytes
        self._parts: list[bytes] = []
        self._size = 0
        self._timer: asyncio.TimerHandle | None = None
        self._second = -1
        self._second_text = ""
        self._writer = _FdWriter(fd, max_pending_bytes, on_drop or (lambda _lines: None))

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
        self._writer.put(data, lines)

    def close(self, timeout_s: float = 5.0) -> None:
        """Flush and wait (up to ``timeout_s``) until every line is written; blocks, so at shutdown."""
        self.flush()
        self._writer.close(timeout_s)


class _FdWriter:
    """Writes chunks to a file descriptor from a thread of its own, started on first use."""

    def __init__(self, fd: int, max_pending_bytes: int, on_drop: Callable[[int], None]) -> None:
        self._fd = fd
        self._max = max_pending_bytes
        self._on_drop = on_drop
        self._ready = threading.Condition()
        self._chunks: list[tuple[bytes, int]] = []  # (data, lines in it)
        self._pending = 0  # bytes handed over and not yet written, the chunk being written included
        self._closed = False
        self._broken = False  # the descriptor failed (reader gone): everything after is dropped
        self._thread: threading.Thread | None = None

    def put(self, data: bytes, lines: int) -> None:
        with self._ready:
            accepted = not self._broken and not self._closed and self._pending + len(data) <= self._max
            if accepted:
                self._chunks.append((data, lines))
                self._pending += len(data)
                if self._thread is None:
                    self._thread = threading.Thread(target=self._run, name="access-log", daemon=True)
                    self._thread.start()
                self._ready.notify()
        if not accepted:
            self._on_drop(lines)

    def close(self, timeout_s: float) -> None:
        with self._ready:
            self._closed = True
            self._ready.notify()
            thread = self._thread
        if thread is not None:
            thread.join(timeout_s)

    def _run(self) -> None:
        lower_priority()
        while True:
            with self._ready:
                while not self._chunks and not self._closed:
                    self._ready.wait()
                if not self._chunks:
                    return
                data = b"".join(chunk for chunk, _ in self._chunks)
                lines = sum(count for _, count in self._chunks)
                self._chunks.clear()
            written = _write_all(self._fd, data)
            with self._ready:
                self._pending -= len(data)
                if not written:
                    self._broken = True
            if not written:
                self._on_drop(lines)


def _write_all(fd: int, data: bytes) -> bool:
    """``False`` when the descriptor failed (closed pipe, bad fd): the log is then given up.

    Written in pieces of whole lines, each at most ``PIPE_BUF`` bytes: a pipe keeps a write that
    small in one piece, so an error line the ``logging`` handler writes from another thread at
    the same moment falls between two access lines, never inside one.
    """
    start, end = 0, len(data)
    while start < end:
        stop = data.rfind(b"\n", start, start + _ATOMIC_BYTES) + 1
        if stop <= start:  # one line longer than PIPE_BUF: it goes alone
            stop = data.find(b"\n", start) + 1 or end
        view = memoryview(data)[start:stop]
        while view:
            try:
                written = os.write(fd, view)
            except InterruptedError:
                continue
            except OSError:
                return False
            view = view[written:]
        start = stop
    return True
