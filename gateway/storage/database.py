"""The async engine: URL translation, SQLite pragmas, and running migrations at start-up."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import event, text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from gateway.storage.migrations import migrate


def async_url(url: str) -> str:
    """``sqlite:///x`` → aiosqlite, ``postgresql://`` → asyncpg; the config stays driver-free."""
    if url.startswith("sqlite:///"):
        return "sqlite+aiosqlite:///" + url.removeprefix("sqlite:///")
    for prefix in ("postgresql+asyncpg://", "postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+asyncpg://" + url.removeprefix(prefix)
    raise ValueError("database_url must start with sqlite:/// or postgresql://")


@dataclass
class Database:
    engine: AsyncEngine
    url: str

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    async def ping(self) -> None:
        async with self.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))

    async def close(self) -> None:
        await self.engine.dispose()


# WAL lets the CLI and several worker processes read while one writes; the busy timeout
# turns brief write contention into a wait instead of "database is locked". SQLite's default
# page cache (2 MiB per connection) fills as the ledger grows and shows as resident memory
# creeping up for the first hundred thousand requests. The gateway's hot writes are appends and
# its reads are point lookups or rare reports: 512 KiB each does.
BUSY_TIMEOUT_MS = 10_000
SQLITE_PRAGMAS = (
    f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}",  # first: the pragmas below may wait on a lock
    "PRAGMA journal_mode=WAL",
    "PRAGMA synchronous=NORMAL",
    "PRAGMA cache_size=-512",
)
_JOURNAL_RETRY_S = 0.01


def apply_sqlite_pragmas(execute: Callable[[str], object], *, clock: Callable[[], float] = time.monotonic) -> None:
    """Run SQLITE_PRAGMAS through ``execute`` (one statement each).

    Switching a rollback-journal file to WAL needs the write lock, and SQLite refuses it at
    once, without the busy handler, while another connection holds that lock: on a fresh
    file, processes starting together (a server's workers, a CLI beside them) switch at the
    same moment and a loser failed start-up with "database is locked". The switch is retried
    for as long as the busy timeout; once any process has made it, the file is in WAL and the
    pragma is a no-op.
    """
    deadline = clock() + BUSY_TIMEOUT_MS / 1000
    for pragma in SQLITE_PRAGMAS:
        while True:
            try:
                execute(pragma)
                break
            except sqlite3.OperationalError as exc:
                if "journal_mode" not in pragma or "locked" not in str(exc) or clock() >= deadline:
                    raise
                time.sleep(_JOURNAL_RETRY_S)  # start-up only: a file already in WAL never gets here


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cursor = dbapi_conn.cursor()
    try:
        apply_sqlite_pragmas(cursor.execute)
    finally:
        cursor.close()


async def open_database(url: str, *, run_migrations: bool = True) -> Database:
    driver_url = async_url(url)
    kwargs: dict[str, Any] = {}
    if driver_url.startswith("sqlite"):
        path = Path(driver_url.removeprefix("sqlite+aiosqlite:///"))
        path.parent.mkdir(parents=True, exist_ok=True)
    else:
        kwargs.update(pool_size=5, max_overflow=10, pool_pre_ping=True)
    engine = create_async_engine(driver_url, **kwargs)
    if engine.dialect.name == "sqlite":
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
    db = Database(engine=engine, url=url)
    if run_migrations:
        async with engine.begin() as conn:
            await conn.run_sync(migrate)
    return db
