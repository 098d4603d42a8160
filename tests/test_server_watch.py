"""The per-request disconnect watcher ends with its request, whatever the outcome.

It is not cancelled when the answer is complete (that cost ~10 µs a request): it relies on
uvicorn's ``receive`` reporting ``http.disconnect`` once the last byte is sent. If that ever
stopped being true, every request would leave a task behind: this test would see them.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import FakeHandle
from openai import OpenAI

from gateway.config.settings import load_settings
from gateway.server.app import GatewayApp
from support.gateway_proc import ADMIN_KEY, GatewayConfig
from support.servers import start_uvicorn_in_thread


class _LoopSpy:
    """The gateway app, remembering the event loop uvicorn runs it on."""

    def __init__(self, app: GatewayApp) -> None:
        self.app = app
        self.loop: asyncio.AbstractEventLoop | None = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.loop = asyncio.get_running_loop()
        await self.app(scope, receive, send)


@pytest.fixture
def served(tmp_path: Path, fake: FakeHandle) -> Iterator[tuple[str, _LoopSpy]]:
    config = GatewayConfig(root=tmp_path, upstream=fake.url, database_url=f"sqlite:///{tmp_path / 'g.db'}").write()
    with pytest.MonkeyPatch.context() as env:
        env.setenv("GATEWAY_ADMIN_KEY", ADMIN_KEY)
        env.setenv("TEST_PROVIDER_KEY", "sk-test")
        settings = load_settings(config)
    spy = _LoopSpy(GatewayApp(settings))
    url, stop = start_uvicorn_in_thread(spy, lifespan="on", startup_timeout=60)
    try:
        yield url, spy
    finally:
        stop()


def _watchers(loop: asyncio.AbstractEventLoop) -> int:
    async def count() -> int:
        return sum(
            1 for task in asyncio.all_tasks() if getattr(task.get_coro(), "__qualname__", "") == "_Watch.watch"
        )

    return asyncio.run_coroutine_threadsafe(count(), loop).result(timeout=5)


def _settled(loop: asyncio.AbstractEventLoop) -> int:
    """Watchers still alive once every answer is out (they end on the loop's next turns)."""
    for _ in range(100):
        left = _watchers(loop)
        if left == 0:
            return 0
        time.sleep(0.02)
    return left


def _abandon_mid_request(url: str, key: str) -> None:
    """Send a complete request and hang up before the (slow) answer comes."""
    host, port = url.removeprefix("http://").split(":")
    body = b'{"model":"fake-chat","messages":[{"role":"user","content":"hi"}]}'
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {key}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(head + body)


def test_watchers_end_with_their_requests(served: tuple[str, _LoopSpy], fake: FakeHandle) -> None:
    url, spy = served
    admin = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {ADMIN_KEY}"})
    key = admin.post("/admin/keys", json={"team": "alpha", "roles": ["app"]}).json()["key"]
    admin.close()
    client = OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0)
    messages: Any = [{"role": "user", "content": "hi"}]
    for _ in range(5):
        client.chat.completions.create(model="fake-chat", messages=messages)  # JSON answers
        chunks = list(client.chat.completions.create(model="fake-chat", messages=messages, stream=True))
        assert chunks
    with pytest.raises(Exception, match="model"):
        client.chat.completions.create(model="no-such-model", messages=messages)  # a gateway error
    bad = OpenAI(base_url=f"{url}/v1", api_key="sk-wrong", max_retries=0)
    with pytest.raises(Exception, match=r"401|API key"):
        bad.chat.completions.create(model="fake-chat", messages=messages)
    fake.configure(latency_ms=300)
    try:
        _abandon_mid_request(url, key)  # the caller goes away: the watcher cancels the request
        time.sleep(0.1)
    finally:
        fake.configure(latency_ms=0)
    assert spy.loop is not None
    assert _settled(spy.loop) == 0


def test_start_up_freezes_its_heap_and_sets_the_young_threshold(served: tuple[str, _LoopSpy]) -> None:
    """``server.gc_threshold`` (default 10,000) is the young generation's threshold once the app
    has started, and start-up's heap is frozen out of the collector's walks."""
    import gc

    from gateway.config.settings import ServerSettings

    assert gc.get_threshold()[0] == ServerSettings().gc_threshold == 10_000
    assert gc.get_freeze_count() > 10_000


def test_settling_the_heap_sets_only_the_young_threshold() -> None:
    import gc

    from gateway.heap import settle

    before = gc.get_threshold()
    try:
        settle(1234)
        assert gc.get_threshold() == (1234, *before[1:])
    finally:
        gc.set_threshold(*before)
        gc.unfreeze()
