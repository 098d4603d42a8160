"""Writing log lines without ever blocking the event loop.

A ``write`` to stderr blocks when its reader is slow: a pipe into a stalled log shipper, a
terminal paused with Ctrl-S. On the event loop that freezes every request. So the server's log
lines (the access log and ``logging``'s records alike) are handed to one thread per descriptor
that does the writing at a low CPU priority (``gateway.threads``); only it ever waits.
Lines pile up to a bound, and past it they are dropped and counted (the caller's ``on_drop``):
logging is fail-open, requests never wait for it.

Lines are written in pieces of whole lines, each at most ``PIPE_BUF`` bytes, which a pipe keeps
in one piece: what another writer (uvicorn's own handler, a library printing) puts on the same
descriptor falls between two lines, never inside one.
"""

from __future__ import annotations

import atexit
import os
import select
import threading
from collections.abc import Callable

from gateway.threads import run_as_background

#: Bytes a pipe writes in one piece (POSIX guarantees at least 512).
ATOMIC_BYTES = getattr(select, "PIPE_BUF", 512)
#: Bytes that may wait for a slow reader before lines are dropped.
MAX_PENDING_BYTES = 8 * 1024 * 1024

DropCounter = Callable[[int], None]


class LineWriter:
    """Writes chunks of ``\\n``-terminated lines to a descriptor from a thread of its own.

    Usage::

        writer = LineWriter(2)
        writer.put(b'{"msg": "hello"}\\n', lines=1, on_drop=counter.inc)   # never blocks
        writer.drain(5.0)                                                  # at shutdown
    """

    def __init__(self, fd: int, *, max_pending_bytes: int = MAX_PENDING_BYTES) -> None:
        self._fd = fd
        self._max = max_pending_bytes
        self._ready = threading.Condition()
        self._chunks: list[tuple[bytes, int, DropCounter | None]] = []
        self._pending = 0  # bytes handed over and not yet written, the chunk being written included
        self._closed = False
        self._broken = False  # the descriptor failed (reader gone): everything after is dropped
        self._thread: threading.Thread | None = None

    @property
    def pending_bytes(self) -> int:
        return self._pending

    def put(self, data: bytes, lines: int, on_drop: DropCounter | None = None) -> bool:
        """Queue ``data`` (whole lines); ``False``, and ``on_drop(lines)``, when it was dropped."""
        with self._ready:
            accepted = not self._broken and not self._closed and self._pending + len(data) <= self._max
            if accepted:
                self._chunks.append((data, lines, on_drop))
                self._pending += len(data)
                if self._thread is None:
                    self._thread = threading.Thread(target=self._run, name=f"log-writer-{self._fd}", daemon=True)
                    self._thread.start()
                self._ready.notify_all()
        if not accepted and on_drop is not None:
            on_drop(lines)
        return accepted

    def drain(self, timeout_s: float) -> bool:
        """Wait until everything queued so far is written (or dropped); ``False`` on timeout."""
        with self._ready:
            return self._ready.wait_for(lambda: self._pending == 0 or self._broken, timeout_s)

    def close(self, timeout_s: float) -> None:
        """Write what is queued (waiting up to ``timeout_s``), then stop the thread."""
        with self._ready:
            self._closed = True
            self._ready.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join(timeout_s)

    def _run(self) -> None:
        run_as_background()  # never preempts the loop, never starves holding the GIL
        while True:
            with self._ready:
                while not self._chunks and not self._closed:
                    self._ready.wait()
                if not self._chunks:
                    return
                chunks, self._chunks = self._chunks, []
            data = b"".join(chunk for chunk, _, _ in chunks)
            written = _write_lines(self._fd, data)
            if not written:
                # Counted before ``drain`` is let go: "written or dropped" includes the count.
                for _, lines, on_drop in chunks:
                    if on_drop is not None:
                        on_drop(lines)
            with self._ready:
                self._pending -= len(data)
                if not written:
                    self._broken = True
                self._ready.notify_all()


def _write_lines(fd: int, data: bytes) -> bool:
    """``False`` when the descriptor failed (closed pipe, bad fd): the writer then gives up."""
    start, end = 0, len(data)
    while start < end:
        stop = data.rfind(b"\n", start, start + ATOMIC_BYTES) + 1
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


_stderr: LineWriter | None = None
_stderr_lock = threading.Lock()


def stderr_lines() -> LineWriter:
    """The process's one writer for stderr; what it holds at exit is written (up to 2 s)."""
    global _stderr
    with _stderr_lock:
        if _stderr is None:
            _stderr = LineWriter(2)
            atexit.register(_stderr.close, 2.0)
        return _stderr
