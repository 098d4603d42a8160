"""Appending batches of rows to an append-only table (the cost ledger) at a driver's cost.

Why not ``conn.execute(insert(table), rows)``: SQLAlchemy Core re-examines every row's dict on
the event loop, and aiosqlite hands each statement to its thread and back. Measured here, a
100-row ledger batch cost ~1.6 ms of CPU that way, most of it holding the loop; at concurrency 1
that stall was the gateway's p99. Here the ``INSERT`` is compiled once per dialect, each value
goes through the same type processor SQLAlchemy would apply (so the stored text of a timestamp
is identical and reads back the same through the ORM), and then:

* **SQLite** (a file): the batch goes to one dedicated thread that owns its own ``sqlite3``
  connection; one hand-off per batch, one transaction, one multi-row ``INSERT`` per
  ``YIELD_EVERY_ROWS`` rows. ``sqlite3`` releases the
  GIL while SQLite works, so the loop keeps serving. ~0.5 ms a 100-row batch, about a third.
  The thread gives its core back every ``YIELD_EVERY_ROWS`` rows: where it shares one with the
  loop, a request the loop was woken for no longer waits out the whole batch.
* **PostgreSQL** (or an in-memory SQLite, which a second connection could not see): one
  connection held across batches, ``executemany`` through the driver (``exec_driver_sql``), one
  transaction; ~0.5 ms of event-loop time per 100 rows.

Failures come out sorted into the two kinds a writer must treat differently: ``RowsRefused``
(the database rejects a row itself, a constraint or a value it cannot store: retrying cannot
help) and ``AppendFailed`` (anything else: down, locked, the table missing: retry later).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

from sqlalchemy import Table, insert
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import DataError, IntegrityError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql.schema import ScalarElementColumnDefault

from gateway.storage.database import Database, apply_sqlite_pragmas
from gateway.threads import run_as_background

Row = Mapping[str, Any]

#: Rows the SQLite writer thread converts and inserts before it gives the core back
#: (``os.sched_yield``, which also releases the GIL). A 100-row ledger batch costs that thread
#: ~2.5 ms of CPU (converting the values, three indexes, the commit), and a thread that is
#: running keeps its core against the event loop that a request just woke: where both share a
#: core (a container's one CPU; the benchmark's pinned gateway) the whole batch landed on one
#: request. Measured at concurrency 1 (core profile, 15,000 requests): 149 of 150 batches
#: overlapped a request slower than 1.2 ms, the p99 was 2.2 ms and grew with the batch
#: (10.5 ms at 1,000 rows). Eight rows are ~0.2 ms of work; a yield costs ~1 µs.
YIELD_EVERY_ROWS = 8
#: A batch larger than ``YIELD_EVERY_ROWS * SLICES_WHEN_BEHIND`` rows (the ledger writer catching
#: up on a backlog: the loop is saturated, and requests queue anyway) goes in this many slices.
#: Each slice costs the thread a wait for the GIL that a busy loop holds (up to its 5 ms switch
#: interval): in slices of 8 rows the writer managed ~1,500 rows/s at c=64 on a fast VM, behind
#: ~3,000 requests/s, and its queue (and RSS, ~1 KiB a row) grew until rows would be dropped.
SLICES_WHEN_BEHIND = 16


def _yield_core() -> None:
    """Let a runnable thread of the same core (the event loop, woken) run first."""
    if hasattr(os, "sched_yield"):  # POSIX; elsewhere the slices alone remain
        os.sched_yield()


class RowsRefused(Exception):
    """The database refused a row of the batch; nothing of the batch was written."""


class AppendFailed(Exception):
    """The batch could not be written for a reason outside its rows; nothing was written."""


class BulkAppender(Protocol):
    async def append(self, rows: Sequence[Row]) -> None:
        """Write every row in one transaction, or none (raising ``RowsRefused``/``AppendFailed``)."""

    async def close(self) -> None:
        """Release the appender's connection or thread; it must not be used afterwards."""


def bulk_appender(db: Database, table: Table) -> BulkAppender:
    """The cheapest appender for ``db``'s backend (see the module docstring)."""
    statement = _Statement(table, db.engine.dialect)
    url = db.engine.url
    if url.get_backend_name() == "sqlite" and url.database and url.database != ":memory:":
        return _SqliteThreadAppender(url.database, statement)
    return _EngineAppender(db, statement)


class _Statement:
    """The table's ``INSERT`` as the driver's SQL, and rows turned into its parameter tuples.

    The autoincrement key is left to the database; a column missing from a row gets its
    scalar default (as Core would) or NULL.
    """

    def __init__(self, table: Table, dialect: Dialect) -> None:
        auto = table.autoincrement_column
        columns = [column for column in table.columns if column is not auto]
        self.names = tuple(column.name for column in columns)
        self.sql = str(insert(table).compile(dialect=dialect, column_keys=list(self.names)))
        self._rows_sql: dict[int, str] = {1: self.sql}
        self._defaults = tuple(
            column.default.arg if isinstance(column.default, ScalarElementColumnDefault) else None
            for column in columns
        )
        self._processors: tuple[tuple[int, Callable[[Any], Any]], ...] = tuple(
            (index, processor)
            for index, column in enumerate(columns)
            if (processor := column.type.dialect_impl(dialect).bind_processor(dialect)) is not None
        )

    def rows_sql(self, count: int) -> str:
        """The ``INSERT`` of ``count`` rows in one statement (``VALUES (...), (...)``, with
        ``sql``'s qmark placeholders), for ``count * len(names)`` flat parameters."""
        sql = self._rows_sql.get(count)
        if sql is None:
            if len(self._rows_sql) >= 64:  # slices come in a few sizes; a large batch_size, more
                self._rows_sql.clear()
            head, _, one_row = self.sql.rpartition(" VALUES ")
            sql = self._rows_sql[count] = f"{head} VALUES {', '.join([one_row] * count)}"
        return sql

    def parameters(self, rows: Sequence[Row]) -> list[tuple[Any, ...]]:
        names, defaults, processors = self.names, self._defaults, self._processors
        out: list[tuple[Any, ...]] = []
        for row in rows:
            values = [row.get(name, default) for name, default in zip(names, defaults, strict=True)]
            for index, processor in processors:
                if values[index] is not None:
                    values[index] = processor(values[index])
            out.append(tuple(values))
        return out


class _SqliteThreadAppender:
    """Batches go to one background thread that owns its own connection; a connection that
    never moves between threads needs no locking of its own."""

    def __init__(self, path: str, statement: _Statement) -> None:
        self._path = path
        self._statement = statement
        self._conn: sqlite3.Connection | None = None
        self._max_parameters = 999  # SQLite's limit before 3.32; read off the connection
        # A background thread (``gateway.threads``): it never preempts the event loop on waking,
        # and keeps the loop's weight, so it neither starves under load nor holds the GIL starved.
        self._executor = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="sqlite-append", initializer=run_as_background
        )

    async def append(self, rows: Sequence[Row]) -> None:
        await asyncio.get_running_loop().run_in_executor(self._executor, self._append_in_thread, rows)

    async def close(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self._executor, self._reset)
        self._executor.shutdown(wait=True)

    # -- on the writer thread ------------------------------------------------------------------

    def _append_in_thread(self, rows: Sequence[Row]) -> None:
        statement = self._statement
        try:
            conn = self._connection()
            # IMMEDIATE takes the write lock up front (waiting up to the busy timeout), so the
            # batch cannot fail half-way on a lock another process took in between.
            conn.execute("BEGIN IMMEDIATE")
            try:
                # A few rows at a time, giving the core back in between: see YIELD_EVERY_ROWS.
                # Each slice is one statement (rows_sql), not executemany: sqlite3 lets go of
                # the GIL around every step, once a row with executemany, and each time the
                # thread waits to get it back from a busy loop (SLICES_WHEN_BEHIND).
                step = max(YIELD_EVERY_ROWS, -(-len(rows) // SLICES_WHEN_BEHIND))
                step = max(1, min(step, self._max_parameters // len(statement.names)))
                for start in range(0, len(rows), step):
                    chunk = statement.parameters(rows[start:start + step])
                    conn.execute(statement.rows_sql(len(chunk)), [value for row in chunk for value in row])
                    _yield_core()
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        except (sqlite3.IntegrityError, sqlite3.DataError) as exc:
            raise RowsRefused(str(exc)) from exc
        except sqlite3.Error as exc:
            self._reset()  # whatever went wrong, the next batch starts on a fresh connection
            raise AppendFailed(f"{type(exc).__name__}: {exc}") from exc

    def _reset(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(sqlite3.Error):
                self._conn.close()
            self._conn = None

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            # isolation_level=None: transactions are begun and ended here, explicitly.
            conn = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
            apply_sqlite_pragmas(conn.execute)
            self._max_parameters = conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)
            self._conn = conn
        return self._conn


class _EngineAppender:
    """Batches over one connection held for the appender's lifetime.

    Checking a connection out of the pool for every batch cost a pre-ping round trip and the
    pool's bookkeeping, ~0.2 ms of event-loop time per batch on PostgreSQL (0.77 → 0.54 ms
    for 100 rows). A connection that failed is dropped; the next batch opens a fresh one.
    """

    def __init__(self, db: Database, statement: _Statement) -> None:
        self._db = db
        self._statement = statement
        self._conn: AsyncConnection | None = None

    async def append(self, rows: Sequence[Row]) -> None:
        parameters = self._statement.parameters(rows)
        try:
            if self._conn is None:
                self._conn = await self._db.engine.connect()
            async with self._conn.begin():
                await self._conn.exec_driver_sql(self._statement.sql, parameters)
        except (IntegrityError, DataError) as exc:
            raise RowsRefused(str(exc.orig)) from exc
        except (SQLAlchemyError, OSError) as exc:
            await self._drop_connection()
            # The driver's own message: SQLAlchemy's would quote the statement and the batch.
            cause = getattr(exc, "orig", None) or exc
            raise AppendFailed(f"{type(cause).__name__}: {cause}") from exc

    async def close(self) -> None:
        await self._drop_connection()

    async def _drop_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):  # already broken: nothing more to do with it
                await conn.invalidate()
                await conn.close()
