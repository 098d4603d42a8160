"""Log lines never make a request wait: a slow or vanished stderr reader costs lines (counted),
never the event loop; what is written is whole lines, in order, from the access log and from
``logging`` alike."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import orjson
import pytest

from gateway.observe import lines as line_module
from gateway.observe.access import AccessLog
from gateway.observe.lines import LineWriter
from gateway.observe.logs import JsonFormatter, LineHandler


@pytest.fixture
def pipe() -> Iterator[tuple[int, int]]:
    read_fd, write_fd = os.pipe()
    yield read_fd, write_fd
    for fd in (read_fd, write_fd):
        with contextlib.suppress(OSError):
            os.close(fd)


def _read_all(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 1 << 16):
        chunks.append(chunk)
    return b"".join(chunks)


def _fields(i: int) -> dict[str, Any]:
    return {"request_id": f"req-{i:06d}", "team": "alpha", "status": 200, "padding": "x" * 200}


def _in_thread(work: Any, timeout_s: float = 30.0) -> None:
    """Run ``work`` and fail (instead of hanging the suite) if it blocks."""
    errors: list[BaseException] = []

    def run() -> None:
        try:
            work()
        except BaseException as exc:  # reported below
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout_s)
    assert not thread.is_alive(), "the access log blocked its caller"
    if errors:
        raise errors[0]


def _reader(fd: int) -> tuple[threading.Thread, list[bytes]]:
    received: list[bytes] = []
    thread = threading.Thread(target=lambda: received.append(_read_all(fd)), daemon=True)
    thread.start()
    return thread, received


def test_lines_are_whole_json_objects_in_order(pipe: tuple[int, int]) -> None:
    read_fd, write_fd = pipe
    reader, received = _reader(read_fd)
    writer = LineWriter(write_fd)
    log = AccessLog(writer, max_buffer_bytes=4096)
    for i in range(500):
        log.write(_fields(i))  # no running loop: each write is handed on at once
    log.close()
    writer.close(30)
    os.close(write_fd)
    reader.join(30)
    lines = received[0].splitlines()
    entries = [orjson.loads(line) for line in lines]
    assert [entry["request_id"] for entry in entries] == [f"req-{i:06d}" for i in range(500)]
    assert {entry["logger"] for entry in entries} == {"gateway.access"}


def test_a_stalled_reader_costs_lines_never_the_caller(pipe: tuple[int, int]) -> None:
    read_fd, write_fd = pipe
    dropped: list[int] = []
    # Nobody reads: the pipe (64 KiB) fills, then the writer thread's write blocks.
    writer = LineWriter(write_fd, max_pending_bytes=32 * 1024)
    log = AccessLog(writer, max_buffer_bytes=1024, on_drop=dropped.append)

    def flood() -> None:
        for i in range(3000):  # ~750 KiB, far past the pipe and the pending bound
            log.write(_fields(i))
        log.flush()

    _in_thread(flood)
    assert sum(dropped) > 0
    # The reader comes back: what was kept arrives whole, and new lines flow again.
    reader, received = _reader(read_fd)
    for _ in range(3000):
        if log._writer.pending_bytes == 0:
            break
        time.sleep(0.01)
    log.write(_fields(999_999))
    log.close()
    writer.close(30)
    os.close(write_fd)
    reader.join(30)
    lines = received[0].splitlines()
    ids = [orjson.loads(line)["request_id"] for line in lines]
    assert ids[-1] == "req-999999"
    assert len(ids) - 1 + sum(dropped) == 3000
    assert ids[:-1] == sorted(ids[:-1])  # kept lines stay in order


def test_a_reader_that_went_away_is_given_up_quietly(pipe: tuple[int, int]) -> None:
    read_fd, write_fd = pipe
    os.close(read_fd)  # writes now fail with EPIPE
    dropped: list[int] = []
    log = AccessLog(LineWriter(write_fd), max_buffer_bytes=1024, on_drop=dropped.append)

    def write() -> None:
        for i in range(100):
            log.write(_fields(i))
        log.close()

    _in_thread(write)
    assert sum(dropped) == 100


def test_writes_are_whole_lines_of_at_most_pipe_buf(monkeypatch: pytest.MonkeyPatch) -> None:
    # Another thread's log line may land between two writes: each write must end a line and
    # be small enough for a pipe to keep it in one piece.
    writes: list[bytes] = []

    def record(fd: int, data: Any) -> int:
        writes.append(bytes(data))
        return len(data)

    monkeypatch.setattr(line_module.os, "write", record)
    lines = [orjson.dumps({"i": i, "pad": "y" * (i % 700)}) + b"\n" for i in range(400)]
    long_line = b'{"long":"' + b"z" * 10_000 + b'"}\n'
    data = b"".join(lines[:200]) + long_line + b"".join(lines[200:])
    assert line_module._write_lines(99, data)
    assert b"".join(writes) == data
    for piece in writes:
        assert piece.endswith(b"\n")
        assert len(piece) <= line_module.ATOMIC_BYTES or piece == long_line


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread priorities are Linux's")
def test_the_writer_thread_yields_the_core(pipe: tuple[int, int], monkeypatch: pytest.MonkeyPatch) -> None:
    # SCHED_BATCH at the process's nice (gateway.threads: a higher nice, starved while holding
    # the GIL, stalled the event loop).
    _, write_fd = pipe
    seen: list[tuple[int, int]] = []
    real_write = os.write

    def spy(fd: int, data: Any) -> int:
        seen.append((os.sched_getscheduler(0), os.getpriority(os.PRIO_PROCESS, threading.get_native_id())))
        return real_write(fd, data)

    monkeypatch.setattr(line_module.os, "write", spy)
    log = AccessLog(LineWriter(write_fd))
    log.write(_fields(1))
    log.close()
    assert seen and set(seen) == {(os.SCHED_BATCH, os.getpriority(os.PRIO_PROCESS, 0))}


def test_logging_records_go_through_the_writer_and_never_block(pipe: tuple[int, int]) -> None:
    """An upstream outage makes every request log a warning: with nobody reading stderr, the
    logging call must still return at once, and the lines that could not wait are counted."""
    read_fd, write_fd = pipe
    writer = LineWriter(write_fd, max_pending_bytes=16 * 1024)
    handler = LineHandler(writer)
    handler.setFormatter(JsonFormatter())
    dropped: list[int] = []
    handler.on_drop = dropped.append
    logger = logging.getLogger("test.log_lines")
    logger.propagate = False
    logger.addHandler(handler)
    try:

        def flood() -> None:
            for i in range(2000):
                logger.warning("upstream attempt failed", extra={"request_id": f"req-{i:06d}", "pad": "p" * 200})

        _in_thread(flood)
        assert sum(dropped) > 0
        reader, received = _reader(read_fd)
        writer.close(30)
        os.close(write_fd)
        reader.join(30)
    finally:
        logger.removeHandler(handler)
    entries = [orjson.loads(line) for line in received[0].splitlines()]
    assert len(entries) + sum(dropped) == 2000
    assert {entry["logger"] for entry in entries} == {"test.log_lines"}
    ids = [entry["request_id"] for entry in entries]
    assert ids == sorted(ids)
