"""Shared fixtures: the fake upstream, real PostgreSQL and Redis, and running gateways.

PostgreSQL and Redis are real. On a developer's machine without them the tests that need
them are skipped with the reason; under CI (``CI=true``) a missing service is a failure,
because CI must test both storage backends and the Redis paths.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
import socket
import tempfile
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.testing.fake_upstream import FakeUpstream
from gateway.testing.langfuse_receiver import LangfuseReceiver
from support.gateway_proc import ADMIN_KEY, GatewayConfig, GatewayProcess
from support.servers import start_uvicorn_in_thread

PG_ADMIN_URL = os.environ.get("TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
# Redis logical databases 13, 14, 15: one per pytest-xdist worker (gw0, gw1, gw2), because the
# tests that use Redis flush their database; one worker, or no xdist, uses 13.
_XDIST_WORKER = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0)
if _XDIST_WORKER > 2:
    raise RuntimeError("the tests have Redis databases 13-15 for at most three xdist workers")
REDIS_URL = os.environ.get("TEST_REDIS_URL", f"redis://127.0.0.1:6379/{13 + _XDIST_WORKER}")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


# Tests marked ``alone`` hold the gateway to a wall-clock bound (hostile input may not stall
# /health/live for more than 50 ms; a dead Redis may add at most 1 ms to the p50). Beside a
# second xdist worker on a 2-core machine the other worker's CPU is in that measurement, so
# such a test takes an exclusive lock that every other test holds shared: while it runs, from
# its setup to its teardown, the other worker waits between tests. The turnstile lock gives
# the exclusive taker priority, so a busy worker cannot starve it by re-taking the shared lock.
_RUN_LOCKS = Path(tempfile.gettempdir()) / f"gateway-tests-{os.environ.get('PYTEST_XDIST_TESTRUNUID', 'solo')}"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Generator[None, object, object]:
    if "PYTEST_XDIST_WORKER" not in os.environ:
        return (yield)
    alone = item.get_closest_marker("alone") is not None
    with open(f"{_RUN_LOCKS}.turnstile", "a") as turnstile, open(f"{_RUN_LOCKS}.run", "a") as run:
        fcntl.flock(turnstile, fcntl.LOCK_EX)
        try:
            fcntl.flock(run, fcntl.LOCK_EX if alone else fcntl.LOCK_SH)
        finally:
            fcntl.flock(turnstile, fcntl.LOCK_UN)
        try:
            return (yield)
        finally:
            fcntl.flock(run, fcntl.LOCK_UN)


def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def _need_service(name: str, host: str, port: int) -> None:
    if _reachable(host, port):
        return
    message = f"{name} is not reachable on {host}:{port}"
    if IN_CI:
        pytest.fail(message + " (CI must test it)")
    pytest.skip(message)


@dataclass
class FakeHandle:
    """The fake upstream's URL and its control API."""

    url: str
    app: FakeUpstream

    def reset(self) -> None:
        httpx.post(f"{self.url}/_fake/reset").raise_for_status()

    def faults(self, *faults: dict[str, Any]) -> None:
        httpx.post(f"{self.url}/_fake/faults", json=list(faults)).raise_for_status()

    def configure(self, **options: Any) -> None:
        httpx.post(f"{self.url}/_fake/config", json=options).raise_for_status()

    def stats(self) -> dict[str, Any]:
        response = httpx.get(f"{self.url}/_fake/stats")
        response.raise_for_status()
        return response.json()  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def receiver() -> Iterator[LangfuseReceiver]:
    """A local Langfuse receiver for the module's traced gateways (a test module that needs a
    fresh one per test defines its own ``receiver``)."""
    with LangfuseReceiver() as running:
        yield running


@pytest.fixture(scope="session")
def fake_upstream() -> Iterator[FakeHandle]:
    app = FakeUpstream()
    url, stop = start_uvicorn_in_thread(app)
    yield FakeHandle(url, app)
    stop()


@pytest.fixture
def fake(fake_upstream: FakeHandle) -> FakeHandle:
    """The fake upstream, reset (no faults, zero counters) for this test."""
    fake_upstream.reset()
    fake_upstream.configure(latency_ms=0, chunk_delay_ms=0, stream_chunks=8)
    return fake_upstream


def _pg_admin(sql: str) -> None:
    import asyncio

    import asyncpg

    async def run() -> None:
        conn = await asyncpg.connect(PG_ADMIN_URL)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(run())


@contextlib.contextmanager
def _fresh_pg_database() -> Iterator[str]:
    _need_service("PostgreSQL", "127.0.0.1", 5432)
    name = "gw_test_" + secrets.token_hex(4)
    _pg_admin(f'CREATE DATABASE "{name}"')
    try:
        yield f"{PG_ADMIN_URL.rsplit('/', 1)[0]}/{name}"
    finally:
        _pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """A fresh PostgreSQL database for this test session, dropped at the end."""
    with _fresh_pg_database() as url:
        yield url


@pytest.fixture
def fresh_pg_url() -> Iterator[str]:
    """A PostgreSQL database of this test's own, for tests whose state must not leak
    (applied policies, for one, are authoritative for every gateway on a database)."""
    with _fresh_pg_database() as url:
        yield url


@pytest.fixture(params=["sqlite", "postgres"])
def fresh_database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A database of this test's own, on each backend in turn."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'own.db'}"
    else:
        with _fresh_pg_database() as url:
            yield url


@pytest.fixture(scope="session")
def redis_url() -> str:
    """A real Redis (a dedicated logical database, flushed by the tests that use it)."""
    _need_service("Redis", "127.0.0.1", 6379)
    return REDIS_URL


@pytest.fixture(scope="session", params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> str:
    """Each storage backend in turn: tests using this run once per backend."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path_factory.mktemp('sqlite') / 'gateway.db'}"
    return str(request.getfixturevalue("pg_url"))


def make_gateway(
    root: Path, upstream: str, database_url: str, *, redis_url: str = "", workers: int = 1, **config: Any
) -> GatewayProcess:
    return GatewayProcess(
        GatewayConfig(root=root, upstream=upstream, database_url=database_url, redis_url=redis_url, **config),
        workers=workers,
    )


@pytest.fixture(scope="session")
def gateway(tmp_path_factory: pytest.TempPathFactory, fake_upstream: FakeHandle) -> Iterator[GatewayProcess]:
    """One gateway on SQLite with embedded defaults (no Redis), shared by the session."""
    root = tmp_path_factory.mktemp("gateway")
    proc = make_gateway(root, fake_upstream.url, f"sqlite:///{root / 'gateway.db'}").start()
    yield proc
    proc.stop()


@pytest.fixture(scope="session")
def backend_gateway(
    tmp_path_factory: pytest.TempPathFactory, fake_upstream: FakeHandle, database_url: str
) -> Iterator[GatewayProcess]:
    """A gateway per storage backend (SQLite, PostgreSQL)."""
    root = tmp_path_factory.mktemp("backend-gateway")
    proc = make_gateway(root, fake_upstream.url, database_url).start()
    yield proc
    proc.stop()


@pytest.fixture(scope="session")
def team_keys(gateway: GatewayProcess) -> dict[str, str]:
    return {"alpha": gateway.create_key("alpha"), "beta": gateway.create_key("beta")}


@pytest.fixture(scope="session")
def admin_key() -> str:
    return ADMIN_KEY
