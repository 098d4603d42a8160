"""Every way of stopping is bounded: a busy port, a stuck background task, a stuck closer.

``gateway serve`` on a port already in use, with Redis configured, once logged Errno 98 and
then hung for ever in shutdown, waiting on the prompt-label subscriber, ignoring SIGTERM.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
from conftest import FakeHandle, make_gateway

from gateway.prompts.sync import LabelSync
from support.ledger import ledger_rows


def test_serve_on_a_busy_port_exits_at_once_naming_the_address(
    tmp_path: Path, fake: FakeHandle, redis_url: str
) -> None:
    proc = make_gateway(tmp_path, fake.url, f"sqlite:///{tmp_path / 'g.db'}", redis_url=redis_url)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        started = time.monotonic()
        result = subprocess.run(
            [sys.executable, "-m", "gateway", "serve", "--port", str(port)], env=proc.env, cwd=tmp_path,
            capture_output=True, text=True, timeout=30,
        )
    assert result.returncode != 0
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr
    assert time.monotonic() - started < 10


async def test_label_sync_close_is_bounded_when_a_task_will_not_stop() -> None:
    async def refresh() -> bool:
        return True

    sync = LabelSync(refresh, None, 60.0)
    release = asyncio.Event()

    async def stubborn() -> None:
        while not release.is_set():  # swallows cancellation, as a hung connection close can
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                continue

    task = asyncio.create_task(stubborn())
    sync._tasks.append(task)
    started = time.monotonic()
    await sync.close(timeout_s=0.3)
    assert time.monotonic() - started < 2
    release.set()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def test_a_stream_cut_by_the_graceful_shutdown_ends_with_an_error_event_and_is_recorded_as_cut(
    tmp_path: Path, fake: FakeHandle
) -> None:
    database = f"sqlite:///{tmp_path / 'g.db'}"
    server = {"host": "127.0.0.1", "port": 8080, "max_body_bytes": 65536, "log_level": "info",
              "graceful_timeout_s": 1.0}
    proc = make_gateway(tmp_path, fake.url, database, extra={"server": server}).start()
    key = proc.create_key("alpha")
    fake.configure(stream_chunks=40, chunk_delay_ms=250)  # a 10 s answer
    body = b""
    try:
        with httpx.stream("POST", f"{proc.url}/v1/chat/completions", headers={"authorization": f"Bearer {key}"},
                          json={"model": "fake-chat", "stream": True,
                                "messages": [{"role": "user", "content": "hi"}]}, timeout=30) as response:
            assert response.status_code == 200
            signalled = False
            with contextlib.suppress(httpx.HTTPError):
                for chunk in response.iter_raw():
                    body += chunk
                    if not signalled and proc.proc is not None:
                        proc.proc.send_signal(signal.SIGTERM)  # mid-answer: the stream outlives the 1 s grace
                        signalled = True
    finally:
        assert proc.proc is not None
        try:
            code = proc.proc.wait(20)  # the SIGTERM above: a graceful stop, bounded by graceful_timeout_s
        finally:
            proc.stop()
    assert code in (0, -signal.SIGTERM)  # uvicorn re-raises the signal it stopped for
    text = body.decode()
    assert "[DONE]" not in text
    assert '"server_shutting_down"' in text.rsplit("data: ", 1)[-1]
    rows = asyncio.run(ledger_rows(database))
    assert [(row["kind"], row["status"], row["error_code"]) for row in rows] == [("cut", 503, "server_shutting_down")]
