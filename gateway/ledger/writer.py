"""The ledger's background writer: a bounded queue drained in batches into SQLite or PostgreSQL.

The request path only appends a dict to a deque (``submit``). One task per process takes up
to ``batch_size`` rows at a time, waiting at most ``flush_interval_ms`` for a batch to fill,
and writes each batch with one executemany ``INSERT`` in one transaction
(``gateway.storage.bulk``: on SQLite in a background thread, so a batch does not hold up the
requests being served).

Failure rules, in the order they matter to finance:

* The database is down or locked: the batch in hand is retried with exponential backoff
  (50 ms doubling to 5 s) and is never given up while the process runs. New rows keep
  queueing meanwhile; only when ``queue_size`` rows are waiting are new ones dropped, each
  drop counted (``gateway_ledger_rows_dropped_total``) and logged at most every 10 s.
* The database refuses a row itself (a constraint or a value it cannot store): retrying
  cannot help, so the batch is written row by row and only the refused rows are dropped
  (counted and logged), so one bad row cannot block the ledger.
* Graceful shutdown (``close``): everything queued is flushed, retrying for up to
  ``shutdown_timeout_s``; whatever is still unwritten after that is counted and logged as lost.
* SIGKILL or a crash: rows still queued (at most ``flush_interval_ms`` worth plus one batch
  being written) and the rows of requests still in flight are lost. With Redis, the budget
  feature reconciles those requests' expired reservations and writes ``reconciled`` rows.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import Any, Final

from prometheus_client import CollectorRegistry, Counter, Gauge
from sqlalchemy import Table

from gateway.config.settings import LedgerSettings
from gateway.storage import Database
from gateway.storage.bulk import AppendFailed, RowsRefused, bulk_appender
from gateway.storage.schema import ledger
from gateway.throttled_log import ThrottledLog

log = logging.getLogger("gateway.ledger")

_BACKOFF_START_S: Final = 0.05
_BACKOFF_MAX_S: Final = 5.0
_LOG_EVERY_S: Final = 10.0
_CATCH_UP_BATCHES: Final = 10  # the most batches one INSERT takes when the writer is behind


class LedgerMetrics:
    """The writer's Prometheus series, on the gateway's registry.

    ``prefix`` names them: the ledger's are ``gateway_ledger_*``; another append-only table
    written by the same machinery (shadow comparisons) has its own prefix.
    """

    def __init__(
        self, registry: CollectorRegistry | None, prefix: str = "gateway_ledger", what: str = "Ledger"
    ) -> None:
        self.queue_depth = Gauge(
            f"{prefix}_queue_depth", f"{what} rows waiting to be written.",
            registry=registry, multiprocess_mode="livesum",
        )
        self.written = Counter(f"{prefix}_rows_written_total", f"{what} rows written.", registry=registry)
        self.dropped = Counter(
            f"{prefix}_rows_dropped_total",
            f"{what} rows lost: queue full, refused by the database, or unwritten at shutdown.",
            ("reason",), registry=registry,
        )
        self.failed_batches = Counter(
            f"{prefix}_batches_failed_total", f"{what} batch writes that failed and were retried.",
            registry=registry,
        )


class LedgerWriter:
    """Queue plus writer task. ``start`` inside the running loop; ``close`` flushes.

    Usage::

        writer = LedgerWriter(db, LedgerSettings(), metrics=LedgerMetrics(registry))
        writer.start()
        writer.submit(row)          # from the request path: never blocks
        await writer.close()        # at shutdown: writes everything still queued
    """

    def __init__(self, db: Database, settings: LedgerSettings, *, metrics: LedgerMetrics,
                 table: Table = ledger) -> None:
        self._appender = bulk_appender(db, table)
        self._queue_size = settings.queue_size
        self._batch_size = settings.batch_size
        self._interval_s = settings.flush_interval_ms / 1000
        self._shutdown_timeout_s = settings.shutdown_timeout_s
        self._metrics = metrics
        self._pending: deque[dict[str, Any]] = deque()
        self._in_hand = 0  # rows taken off the queue whose write has not finished
        # Rows accepted and rows done with (written or refused), for flush(): rows leave in
        # order, so "done >= accepted at the time of the call" means all of those are through.
        self._accepted = 0
        self._done = 0
        self._flushers = 0  # flush() callers waiting: the writer skips the interval wait
        self._wake = asyncio.Event()
        self._progress = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        self._drop_log = ThrottledLog(log, every_s=_LOG_EVERY_S)
        self._fail_log = ThrottledLog(log, every_s=_LOG_EVERY_S)

    @property
    def depth(self) -> int:
        """Rows not yet in the database (queued plus the batch being written)."""
        return len(self._pending) + self._in_hand

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="ledger-writer")

    def submit(self, row: dict[str, Any]) -> bool:
        """Queue a row; ``False`` (and counted) when the queue is full. Never blocks."""
        pending = self._pending
        if len(pending) >= self._queue_size:
            self._metrics.dropped.labels("queue_full").inc()
            self._drop_log.log("ledger queue full: rows dropped")
            return False
        pending.append(row)
        self._accepted += 1
        size = len(pending)
        if size == 1 or size >= self._batch_size:
            # First row starts the flush-interval clock; a full batch cuts the wait short.
            self._wake.set()
        return True

    async def flush(self) -> None:
        """Wait until every row accepted before this call is written, without the interval wait.

        For readers of the ledger that must see this process's own recent rows (the budget
        feature rebuilding its counters). Rows submitted meanwhile do not delay it. While the
        database is unreachable this waits with the writer: callers bound it with a timeout.
        """
        target = self._accepted
        self._flushers += 1
        try:
            while self._done < target and self._task is not None and not self._task.done():
                self._wake.set()
                self._progress.clear()
                await self._progress.wait()
        finally:
            self._flushers -= 1

    async def close(self) -> None:
        """Stop taking new work after writing what is queued, giving up after the shutdown timeout."""
        self._closing = True
        self._wake.set()
        task = self._task
        if task is None:
            lost = len(self._pending)
        else:
            try:
                await asyncio.wait_for(task, self._shutdown_timeout_s)
                lost = 0
            except TimeoutError:
                # wait_for cancelled the task. The batch in hand, if its write was under way on
                # the SQLite thread, may still land: counted as lost anyway (an over-count).
                lost = self.depth
        self._pending.clear()
        self._metrics.queue_depth.set(0)
        await self._appender.close()
        if lost:
            self._metrics.dropped.labels("shutdown").inc(lost)
            log.error("ledger rows not written at shutdown", extra={"count": lost})

    def _batch_count(self, waiting: int) -> int:
        """Rows for the next INSERT: ``batch_size`` normally, more when the writer is behind.

        Small batches keep each write short (on PostgreSQL, binding a row's parameters runs on
        the event loop), but under a saturated core the writer gets one turn per trip through
        the loop and fixed-size batches fell behind arrivals: the queue, and RSS, grew by ~500
        bytes a request. Taking half the backlog, up to ten batches, lets throughput follow the
        load.
        """
        return min(waiting, max(self._batch_size, min(waiting // 2, self._batch_size * _CATCH_UP_BATCHES)))

    async def _run(self) -> None:
        pending = self._pending
        while True:
            if not pending:
                if self._closing:
                    return
                await self._sleep(None)
                continue
            if len(pending) < self._batch_size and not self._closing and not self._flushers:
                await self._sleep(self._interval_s)
            count = self._batch_count(len(pending))
            batch = [pending.popleft() for _ in range(count)]
            self._in_hand = count
            self._metrics.queue_depth.set(len(pending) + count)
            try:
                await self._write(batch)
            except asyncio.CancelledError:
                raise  # shutdown gave up: close() counts the batch in hand as lost
            except Exception:
                # Not a database error (those are handled in _write): a bug. The writer must
                # outlive it, or every later row would silently pile up until dropped.
                log.exception("ledger writer failed; dropping one batch", extra={"count": count})
                self._metrics.dropped.labels("refused").inc(count)
            self._in_hand = 0
            self._done += count
            self._progress.set()
            self._metrics.queue_depth.set(len(pending))

    async def _sleep(self, seconds: float | None) -> None:
        self._wake.clear()
        try:
            async with asyncio.timeout(seconds):
                await self._wake.wait()
        except TimeoutError:
            pass

    async def _write(self, batch: list[dict[str, Any]]) -> None:
        delay = _BACKOFF_START_S
        while True:
            try:
                await self._appender.append(batch)
                self._metrics.written.inc(len(batch))
                return
            except RowsRefused:
                await self._write_one_by_one(batch)
                return
            except AppendFailed as exc:
                self._metrics.failed_batches.inc()
                self._fail_log.log(
                    "ledger batch write failed; retrying",
                    error=str(exc)[:200], rows=len(batch), queued=len(self._pending),
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, _BACKOFF_MAX_S)

    async def _write_one_by_one(self, batch: list[dict[str, Any]]) -> None:
        """Keep every row the database accepts; drop (and report) only the ones it refuses."""
        for row in batch:
            delay = _BACKOFF_START_S
            while True:
                try:
                    await self._appender.append([row])
                    self._metrics.written.inc()
                    break
                except RowsRefused as exc:
                    self._metrics.dropped.labels("refused").inc()
                    log.error(
                        "ledger row refused by the database",
                        extra={"request_id": row.get("request_id"), "error": str(exc)[:200]},
                    )
                    break
                except AppendFailed:
                    self._metrics.failed_batches.inc()
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, _BACKOFF_MAX_S)
