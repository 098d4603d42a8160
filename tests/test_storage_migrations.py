"""Migrations when several processes open a fresh database at the same moment (the workers of
one server, replicas, a CLI command beside them): each migration runs exactly once and every
process starts. A loser of this race used to fail start-up, which stops a multi-worker server."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

# Imports first (seconds of jitter), then all wait for the same instant before opening.
_OPENER = """
import asyncio, os, sys, time
from gateway.storage import open_database
go = sys.argv[2]
while not os.path.exists(go):
    time.sleep(0.001)
async def main():
    db = await open_database(sys.argv[1])
    await db.close()
asyncio.run(main())
print("opened")
"""


def _open_together(url: str, go: Path, processes: int = 4) -> list[subprocess.CompletedProcess[str]]:
    procs = [
        subprocess.Popen([sys.executable, "-c", _OPENER, url, str(go)], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
        for _ in range(processes)
    ]
    time.sleep(3.0)  # every process has imported and is polling for the start signal
    go.touch()
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        results.append(subprocess.CompletedProcess(proc.args, proc.returncode, out, err))
    return results


@pytest.mark.slow
def test_processes_migrating_a_fresh_database_together_all_start(fresh_database_url: str, tmp_path: Path) -> None:
    results = _open_together(fresh_database_url, tmp_path / "go")
    # the error as well as SQLAlchemy's link line after it
    failures = [r.stderr.strip().splitlines()[-3:] for r in results if r.returncode != 0]
    assert not failures, failures
    assert all(r.stdout.strip() == "opened" for r in results)
    if fresh_database_url.startswith("sqlite"):
        engine = create_engine(fresh_database_url)
        with engine.connect() as conn:
            versions = conn.execute(text("SELECT version FROM schema_migrations ORDER BY version")).scalars().all()
        engine.dispose()
        assert len(versions) == len(set(versions)) > 0, "each migration recorded exactly once"


async def test_a_ledger_from_before_trace_ids_gets_the_column(fresh_database_url: str) -> None:
    from sqlalchemy import inspect as inspect_schema

    from gateway.storage import open_database

    db = await open_database(fresh_database_url)
    async with db.engine.begin() as conn:  # back to a database migrated before migration 60
        await conn.execute(text("ALTER TABLE ledger DROP COLUMN trace_id"))
        await conn.execute(text("DELETE FROM schema_migrations WHERE version = 60"))
    await db.close()

    db = await open_database(fresh_database_url)
    try:
        async with db.engine.connect() as conn:
            columns = await conn.run_sync(lambda sync: [c["name"] for c in inspect_schema(sync).get_columns("ledger")])
            versions = (await conn.execute(text("SELECT version FROM schema_migrations"))).scalars().all()
        assert "trace_id" in columns and 60 in versions
    finally:
        await db.close()


async def test_a_file_locked_while_it_is_switched_to_wal_is_waited_for(tmp_path: Path) -> None:
    """SQLite refuses the switch to WAL at once, busy timeout or not, while another connection
    holds the write lock: processes opening a fresh file together failed start-up on it."""
    import sqlite3
    import threading

    from gateway.storage import open_database

    path = tmp_path / "rollback.db"
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    holder.execute("CREATE TABLE other_process (x)")  # a file in the rollback journal, as new files are
    holder.execute("BEGIN IMMEDIATE")
    holder.execute("INSERT INTO other_process VALUES (1)")
    released = threading.Timer(0.3, lambda: holder.execute("COMMIT"))
    released.start()
    try:
        db = await open_database(f"sqlite:///{path}")
        async with db.engine.connect() as conn:
            mode = (await conn.execute(text("PRAGMA journal_mode"))).scalar_one()
        await db.close()
    finally:
        released.join()
        holder.close()
    assert mode == "wal"


def test_pragmas_give_up_on_the_lock_after_the_busy_timeout_and_never_retry_other_errors() -> None:
    import sqlite3

    from gateway.storage.database import BUSY_TIMEOUT_MS, apply_sqlite_pragmas

    now = [0.0]
    tried: list[str] = []

    def locked(statement: str) -> None:
        tried.append(statement)
        if "journal_mode" in statement:
            now[0] += 1.0
            raise sqlite3.OperationalError("database is locked")

    with pytest.raises(sqlite3.OperationalError, match="locked"):
        apply_sqlite_pragmas(locked, clock=lambda: now[0])
    assert tried.count("PRAGMA journal_mode=WAL") == BUSY_TIMEOUT_MS // 1000  # one a second of the fake clock

    def broken(statement: str) -> None:
        tried.append(statement)
        raise sqlite3.OperationalError("disk I/O error")

    tried.clear()
    with pytest.raises(sqlite3.OperationalError, match="disk"):
        apply_sqlite_pragmas(broken, clock=lambda: 0.0)
    assert len(tried) == 1
