"""Batch appends (the ledger's write path) on both backends: what they store must be exactly
what SQLAlchemy Core would have stored, a refused row must fail the whole batch as "refused",
and a database that is not there must fail it as retryable and recover when it is back."""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, insert, select

from gateway.storage import Database, open_database
from gateway.storage.bulk import AppendFailed, RowsRefused, bulk_appender
from gateway.storage.schema import ledger


@pytest.fixture
async def db(fresh_database_url: str) -> AsyncIterator[Database]:
    database = await open_database(fresh_database_url)
    yield database
    await database.close()


def _row(request_id: str, **changes: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "ts": datetime(2026, 11, 27, 15, 4, 5, 123456, tzinfo=UTC),
        "request_id": request_id,
        "team": "alpha",
        "key_id": "key_1",
        "user": "ünïcode user",
        "alias": "chat",
        "deployment": "chat#0",
        "model": "gpt-4o-mini",
        "prompt_name": "support",
        "prompt_version": 3,
        "variant": "canary",
        "kind": "request",
        "status": 200,
        "prompt_tokens": 12,
        "completion_tokens": 34,
        "cost_nanos": 9_007_199_254_740_993,  # past a double's exact integers: must stay exact
        "saved_nanos": 0,
        "latency_ms": 1.234,
        "error_code": None,
    }
    row.update(changes)
    return row


async def _rows(db: Database) -> dict[str, dict[str, Any]]:
    async with db.engine.connect() as conn:
        result = await conn.execute(select(ledger).order_by(ledger.c.id))
        return {row["request_id"]: {k: v for k, v in row.items() if k != "id"} for row in result.mappings()}


async def _stored_text(db: Database, request_id: str) -> tuple[Any, ...]:
    """The columns as the database holds them, bypassing SQLAlchemy's result processing."""
    async with db.engine.connect() as conn:
        result = await conn.exec_driver_sql(
            "SELECT ts, cost_nanos, latency_ms FROM ledger WHERE request_id = "
            + ("?" if db.dialect == "sqlite" else "$1"),
            (request_id,),
        )
        return tuple(result.one())


async def test_an_appended_row_is_stored_exactly_as_core_stores_it(db: Database) -> None:
    async with db.engine.begin() as conn:
        await conn.execute(insert(ledger), [_row("core")])
    appender = bulk_appender(db, ledger)
    try:
        await appender.append([_row("bulk")])
    finally:
        await appender.close()
    rows = await _rows(db)
    core, bulk = rows["core"], rows["bulk"]
    assert {**bulk, "request_id": "core"} == core
    assert bulk["cost_nanos"] == 9_007_199_254_740_993
    assert await _stored_text(db, "bulk") == await _stored_text(db, "core")


async def test_a_timestamp_in_another_zone_reads_back_as_the_same_instant(db: Database) -> None:
    east = datetime(2026, 11, 28, 1, 4, 5, tzinfo=timezone(timedelta(hours=10)))
    async with db.engine.begin() as conn:
        await conn.execute(insert(ledger), [_row("core", ts=east)])
    appender = bulk_appender(db, ledger)
    try:
        await appender.append([_row("bulk", ts=east)])
    finally:
        await appender.close()
    rows = await _rows(db)
    assert rows["bulk"]["ts"] == rows["core"]["ts"]


async def test_missing_columns_get_their_defaults_or_null(db: Database) -> None:
    appender = bulk_appender(db, ledger)
    try:
        await appender.append(
            [{"ts": datetime.now(UTC), "request_id": "sparse", "team": "alpha", "kind": "reconciled", "status": 0}]
        )
    finally:
        await appender.close()
    row = (await _rows(db))["sparse"]
    assert (row["prompt_tokens"], row["completion_tokens"], row["cost_nanos"], row["latency_ms"]) == (0, 0, 0, 0.0)
    assert row["user"] is None and row["prompt_version"] is None


async def test_a_refused_row_fails_the_whole_batch_as_refused(db: Database) -> None:
    appender = bulk_appender(db, ledger)
    try:
        with pytest.raises(RowsRefused):
            await appender.append([_row("a"), _row("b", team=None), _row("c")])
        assert await _rows(db) == {}  # one transaction: none of the batch is in
        await appender.append([_row("a"), _row("c")])  # the appender is still usable
    finally:
        await appender.close()
    assert sorted(await _rows(db)) == ["a", "c"]


async def test_a_database_without_the_table_fails_as_retryable_and_recovers(fresh_database_url: str) -> None:
    bare = await open_database(fresh_database_url, run_migrations=False)
    appender = bulk_appender(bare, ledger)
    try:
        with pytest.raises(AppendFailed, match=r"no such table|does not exist") as failed:
            await appender.append([_row("early", user="someone@example.com")])
        # The driver's message only: not the statement, not the batch's values (this goes to logs).
        assert "INSERT" not in str(failed.value) and "someone@example.com" not in str(failed.value)
        migrated = await open_database(fresh_database_url)
        try:
            await appender.append([_row("late")])
            assert sorted(await _rows(migrated)) == ["late"]
        finally:
            await migrated.close()
    finally:
        await appender.close()
        await bare.close()


async def test_an_unreachable_postgres_fails_as_retryable() -> None:
    # Port 1 on localhost refuses connections: a database that is down.
    down = await open_database("postgresql://nobody@127.0.0.1:1/none", run_migrations=False)
    appender = bulk_appender(down, ledger)
    try:
        with pytest.raises(AppendFailed):
            await appender.append([_row("x")])
    finally:
        await appender.close()
        await down.close()


async def test_an_in_memory_sqlite_is_written_through_the_engine() -> None:
    # A second connection to ":memory:" would be a different, empty database: the appender
    # must use the engine's own connection, or the rows would vanish.
    db = await open_database("sqlite:///:memory:")
    appender = bulk_appender(db, ledger)
    try:
        await appender.append([_row("m1"), _row("m2")])
        async with db.engine.connect() as conn:
            assert (await conn.execute(select(func.count()).select_from(ledger))).scalar_one() == 2
    finally:
        await appender.close()
        await db.close()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread scheduling is Linux's")
async def test_sqlite_batches_are_written_by_a_background_thread_at_the_loops_weight(tmp_path: Path) -> None:
    # SCHED_BATCH: it never preempts the event loop on waking. The process's own nice: a thread
    # at a higher one, starved while it held the GIL, stalled the loop (gateway.threads).
    db = await open_database(f"sqlite:///{tmp_path / 'batch.db'}")
    appender = bulk_appender(db, ledger)

    def scheduling() -> tuple[int, int]:
        return os.sched_getscheduler(0), os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    try:
        await appender.append([_row("one")])
        seen = appender._executor.submit(scheduling).result()  # type: ignore[attr-defined]
    finally:
        await appender.close()
        await db.close()
    assert seen == (os.SCHED_BATCH, os.getpriority(os.PRIO_PROCESS, 0))


def _traced_inserts(appender: Any) -> list[str]:
    """The INSERT statements the SQLite appender's thread runs from now on (its connection made)."""
    inserts: list[str] = []

    def note(sql: str) -> None:
        if sql.startswith("INSERT"):
            inserts.append(sql)

    appender._executor.submit(lambda: appender._connection().set_trace_callback(note)).result()
    return inserts


async def test_a_sqlite_batch_gives_the_core_back_every_few_rows_in_one_transaction(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The writer thread yields between slices of YIELD_EVERY_ROWS rows, so an event loop woken
    # on the same core runs before the rest of the batch (gateway.storage.bulk); the slices
    # stay one transaction: a row refused in the last slice leaves none of the batch in.
    from gateway.storage import bulk

    # Each slice is one INSERT statement (one step, so the thread takes the GIL back once a
    # slice, not once a row as with executemany): SQLite's trace callback sees each statement run.
    yields: list[int] = []
    monkeypatch.setattr(bulk, "_yield_core", lambda: yields.append(threading.get_native_id()))
    db = await open_database(f"sqlite:///{tmp_path / 'slices.db'}")
    appender = bulk_appender(db, ledger)
    size = bulk.YIELD_EVERY_ROWS * 2 + 3
    inserts: list[str] = []
    try:
        with pytest.raises(RowsRefused):
            await appender.append([_row(f"r{i}", team=None if i == size - 1 else "alpha") for i in range(size)])
        assert await _rows(db) == {}
        yields.clear()
        inserts = _traced_inserts(appender)
        await appender.append([_row(f"w{i}") for i in range(size)])
        assert len(await _rows(db)) == size
    finally:
        await appender.close()
        await db.close()
    assert len(yields) == 3  # after each slice of the 19 rows: 8, 8, 3
    assert threading.get_native_id() not in yields  # on the writer thread, never the loop's
    assert [sql.count("), (") + 1 for sql in inserts] == [8, 8, 3]


async def test_a_postgres_connection_killed_between_batches_is_replaced(fresh_pg_url: str) -> None:
    # The appender holds its connection across batches: when PostgreSQL ends it (a restart, a
    # failover, an idle timeout), that batch fails as retryable and the next one reconnects.
    db = await open_database(fresh_pg_url)
    appender = bulk_appender(db, ledger)
    try:
        await appender.append([_row("before")])
        async with db.engine.begin() as conn:
            await conn.exec_driver_sql(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        with pytest.raises(AppendFailed):  # the writer would retry this batch
            await appender.append([_row("lost-with-the-connection")])
        await appender.append([_row("after")])
    finally:
        await appender.close()
    assert sorted(await _rows(db)) == ["after", "before"]
    await db.close()


async def test_a_sqlite_backlog_is_written_in_few_large_slices_within_sqlites_parameter_limit(tmp_path: Path) -> None:
    # A catch-up batch (the writer behind a saturated loop) goes in SLICES_WHEN_BEHIND statements,
    # not one per 8 rows: each slice costs the thread a wait for the GIL (gateway.storage.bulk).
    # A slice never holds more parameters than the connection allows.
    import sqlite3

    from gateway.storage import bulk

    db = await open_database(f"sqlite:///{tmp_path / 'backlog.db'}")
    appender = bulk_appender(db, ledger)
    try:
        await appender.append([_row("first")])
        conn = appender._connection()  # type: ignore[attr-defined]
        inserts = _traced_inserts(appender)
        await appender.append([_row(f"b{i}") for i in range(1000)])
        assert len(inserts) == bulk.SLICES_WHEN_BEHIND
        assert sum(sql.count("), (") + 1 for sql in inserts) == 1000

        columns = len(ledger.columns) - 1  # the autoincrement key is the database's
        appender._executor.submit(  # type: ignore[attr-defined]
            conn.setlimit, sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, columns * 3
        ).result()
        appender._max_parameters = columns * 3  # type: ignore[attr-defined]
        inserts.clear()
        await appender.append([_row(f"c{i}") for i in range(1000)])
        assert {sql.count("), (") + 1 for sql in inserts} == {3, 1}  # 333 slices of 3, then 1
        assert len(await _rows(db)) == 2001
    finally:
        await appender.close()
        await db.close()
