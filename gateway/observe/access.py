"""The access log: one JSON line per request, written in batches off the request path.

Going through ``logging`` cost more than the rest of the pipeline together (LogRecord
construction, a formatter walking every attribute, a regex per value to scrub secrets, a
write per line). Access lines are built here from fields the gateway itself controls (ids
it generated or validated, names from its configuration, numbers), so they need no
scrubbing: each is one ``orjson.dumps`` into a buffer, written with one ``write`` per
interval or when the buffer is large. A crash can lose at most the last interval's lines;
shutdown flushes.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

import orjson

_PREFIX_LEVEL = {"level": "info", "logger": "gateway.access", "msg": "request"}


class AccessLog:
    def __init__(self, fd: int = 2, *, flush_interval_s: float = 0.1, max_buffer_bytes: int = 64 * 1024) -> None:
        self._fd = fd
        self._interval = flush_interval_s
        self._max = max_buffer_bytes
        self._parts: list[bytes] = []
        self._size = 0
        self._timer: asyncio.TimerHandle | None = None
        self._second = -1
        self._second_text = ""

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
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._parts:
            return
        data = b"".join(self._parts)
        self._parts.clear()
        self._size = 0
        view = memoryview(data)
        while view:
            try:
                written = os.write(self._fd, view)
            except InterruptedError:
                continue
            except OSError:
                return  # stderr gone (closed pipe): dropping access lines beats failing requests
            view = view[written:]
