"""The async engine: URL translation, SQLite pragmas, and running migrations at start-up."""

from __future__ import annotations

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
SQLITE_PRAGMAS = (
    "PRAGMA journal_mode=WAL",
    "PRAGMA busy_timeout=10000",
    "PRAGMA synchronous=NORMAL",
    "PRAGMA cache_size=-512",
)


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cursor = dbapi_conn.cursor()
    for pragma in SQLITE_PRAGMAS:
        cursor.execute(pragma)
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
