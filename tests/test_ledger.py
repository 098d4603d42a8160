"""The ledger's row building and its batched, bounded, retrying writer (in process, real SQLite)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from sqlalchemy import func, select

from gateway.auth import Principal
from gateway.catalog import build_catalog
from gateway.config.policies import ModelsFile, PolicyBundle, TeamsFile
from gateway.config.settings import LedgerSettings
from gateway.context import Endpoint, Origin, RequestContext, Usage
from gateway.errors import InvalidRequest, UpstreamRejected
from gateway.ledger import LedgerMetrics, LedgerSink, LedgerWriter, kind_of, ledger_row
from gateway.pricing import to_nanos
from gateway.storage import Database, open_database
from gateway.storage.schema import ledger

PRICE_IN, PRICE_OUT = 1.5e-7, 6e-7


def _catalog() -> Any:
    models = ModelsFile.model_validate(
        {
            "aliases": {
                "chat": {
                    "deployments": [
                        {"provider": "openai", "model": "gpt-4o-mini", "base_url": "http://127.0.0.1:1/v1",
                         "input_cost_per_token": PRICE_IN, "output_cost_per_token": PRICE_OUT}
                    ]
                }
            }
        }
    )
    return build_catalog(PolicyBundle(models=models, teams=TeamsFile()))


CATALOG = _catalog()


def _ctx(**changes: Any) -> RequestContext:
    ctx = RequestContext(
        request_id="req-1", endpoint=Endpoint.CHAT, raw_body=b"{}", authorization=None, catalog=CATALOG
    )
    ctx.principal = Principal("key_abc", "alpha", frozenset({"app"}))
    alias = CATALOG.aliases["chat"]
    ctx.alias = alias
    ctx.deployment = alias.deployments[0]
    for name, value in changes.items():
        setattr(ctx, name, value)
    return ctx


def _metric(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return registry.get_sample_value(name, labels) or 0.0


@pytest.fixture
async def db(fresh_database_url: str) -> AsyncIterator[Database]:
    """A migrated database of the test's own, on each backend in turn: the two backends write
    batches differently (see gateway.storage.bulk)."""
    database = await open_database(fresh_database_url)
    yield database
    await database.close()


async def _count(db: Database) -> int:
    async with db.engine.connect() as conn:
        return int((await conn.execute(select(func.count()).select_from(ledger))).scalar_one())


async def _wait_for_rows(db: Database, expected: int) -> int:
    for _ in range(500):  # up to ~10 s
        if await _count(db) >= expected:
            break
        await asyncio.sleep(0.02)
    return await _count(db)


def _row(i: int, **changes: Any) -> dict[str, Any]:
    ctx = _ctx(request_id=f"r{i}", usage=Usage(10, 5))
    ctx.cost = ctx.deployment.price.cost(10, 5)  # type: ignore[union-attr]
    row = ledger_row(ctx)
    assert row is not None
    row.update(changes)
    return row


# -- rows ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "kind"),
    [
        ({}, "request"),
        ({"origin": Origin.SHADOW, "status": 502}, "shadow"),
        ({"cache_status": "HIT"}, "cache_hit"),
        ({"cache_status": "MISS"}, "request"),
        ({"budget_status": "rejected", "status": 429}, "rejected"),
        ({"status": 499}, "cancelled"),
        ({"status": 400}, "error"),
        ({"status": 200, "error": UpstreamRejected("cut", status=500)}, "error"),
        ({"status": 429}, "error"),
    ],
)
def test_kind_of_a_request(changes: dict[str, Any], kind: str) -> None:
    assert kind_of(_ctx(**changes)) == kind


def test_row_carries_identity_tokens_and_money_in_nanos() -> None:
    ctx = _ctx(
        user="u-42", prompt_name="greet", prompt_version=3, variant="canary", usage=Usage(1234, 567),
        saved_cost=0.25,
    )
    ctx.cost = ctx.deployment.price.cost(1234, 567)  # type: ignore[union-attr]
    row = ledger_row(ctx)
    assert row is not None
    assert row["team"] == "alpha" and row["key_id"] == "key_abc" and row["user"] == "u-42"
    assert (row["alias"], row["deployment"], row["model"]) == ("chat", "openai/gpt-4o-mini", "gpt-4o-mini")
    assert (row["prompt_name"], row["prompt_version"], row["variant"]) == ("greet", 3, "canary")
    assert (row["prompt_tokens"], row["completion_tokens"]) == (1234, 567)
    assert row["cost_nanos"] == to_nanos(1234 * PRICE_IN + 567 * PRICE_OUT) == 525_300
    assert row["saved_nanos"] == 250_000_000
    assert row["kind"] == "request" and row["status"] == 200 and row["error_code"] is None
    assert row["ts"].tzinfo is not None and row["latency_ms"] >= 0


def test_error_rows_keep_the_code_and_long_user_fields_are_cut() -> None:
    row = ledger_row(_ctx(status=400, error=InvalidRequest("bad", code="invalid_value"), user="x" * 5000))
    assert row is not None
    assert row["kind"] == "error" and row["error_code"] == "invalid_value"
    assert len(row["user"]) == 200


def test_requests_without_a_principal_are_not_rows() -> None:
    queued: list[dict[str, Any]] = []

    class Queue:
        def submit(self, row: dict[str, Any]) -> bool:
            queued.append(row)
            return True

    sink = LedgerSink(Queue())
    sink.record(_ctx(principal=None, status=401))
    assert queued == []
    sink.record(_ctx(status=400))
    assert len(queued) == 1


# -- writer -------------------------------------------------------------------------------


def _writer(db: Database, **settings: Any) -> tuple[LedgerWriter, CollectorRegistry]:
    registry = CollectorRegistry()
    return LedgerWriter(db, LedgerSettings(**settings), metrics=LedgerMetrics(registry)), registry


def _spy_on_batches(writer: LedgerWriter) -> list[int]:
    """The size of every batch the writer hands to its appender, in order."""
    sizes: list[int] = []
    appender = writer._appender
    original = appender.append

    async def append(rows: Any) -> None:
        sizes.append(len(rows))
        await original(rows)

    appender.append = append  # type: ignore[method-assign]
    return sizes


async def test_rows_are_written_in_batches_of_one_transaction_each(db: Database) -> None:
    writer, registry = _writer(db, batch_size=500, flush_interval_ms=50)
    sizes = _spy_on_batches(writer)
    for i in range(700):  # submitted before the task starts: one full batch, then the rest
        assert writer.submit(_row(i))
    writer.start()
    assert await _wait_for_rows(db, 700) == 700
    await writer.close()
    assert sizes == [500, 200]
    assert _metric(registry, "gateway_ledger_rows_written_total") == 700
    assert _metric(registry, "gateway_ledger_queue_depth") == 0


async def test_a_backlog_is_written_in_bigger_batches_until_it_is_caught_up(db: Database) -> None:
    """Under a saturated core the writer gets few turns: it takes half the backlog at a time
    (at most ten batches' worth), then returns to ``batch_size`` once caught up."""
    writer, _ = _writer(db, batch_size=100, flush_interval_ms=50)
    sizes = _spy_on_batches(writer)
    for i in range(3000):
        assert writer.submit(_row(i))
    writer.start()
    assert await _wait_for_rows(db, 3000) == 3000
    await writer.close()
    assert sizes == [1000, 1000, 500, 250, 125, 100, 25]


async def test_a_lone_row_is_written_after_the_flush_interval(db: Database) -> None:
    writer, _ = _writer(db, batch_size=500, flush_interval_ms=20)
    writer.start()
    writer.submit(_row(1))
    assert await _wait_for_rows(db, 1) == 1
    await writer.close()


async def test_a_full_queue_drops_counts_and_logs_once(db: Database, caplog: pytest.LogCaptureFixture) -> None:
    writer, registry = _writer(db, queue_size=10)
    with caplog.at_level(logging.WARNING, logger="gateway.ledger"):
        accepted = [writer.submit(_row(i)) for i in range(15)]
    assert accepted == [True] * 10 + [False] * 5
    assert _metric(registry, "gateway_ledger_rows_dropped_total", reason="queue_full") == 5
    assert len([r for r in caplog.records if "queue full" in r.getMessage()]) == 1  # rate-limited
    writer.start()
    await writer.close()
    assert await _count(db) == 10


async def test_a_failing_database_is_retried_without_losing_rows(tmp_path: Path) -> None:
    # A database without the ledger table fails every insert (a real OperationalError), like a
    # database that is down; once the table exists, the same rows must arrive, none twice.
    url = f"sqlite:///{tmp_path / 'late.db'}"
    bare = await open_database(url, run_migrations=False)
    writer, registry = _writer(bare, batch_size=50, flush_interval_ms=10)
    writer.start()
    for i in range(120):
        writer.submit(_row(i))
    for _ in range(500):
        if _metric(registry, "gateway_ledger_batches_failed_total") >= 2:
            break
        await asyncio.sleep(0.02)
    assert _metric(registry, "gateway_ledger_batches_failed_total") >= 2
    migrated = await open_database(url)  # creates the tables
    try:
        assert await _wait_for_rows(migrated, 120) == 120
        await writer.close()
        async with migrated.engine.connect() as conn:
            ids = (await conn.execute(select(ledger.c.request_id))).scalars().all()
        assert sorted(ids) == sorted(f"r{i}" for i in range(120))
        assert _metric(registry, "gateway_ledger_rows_dropped_total", reason="queue_full") == 0
    finally:
        await migrated.close()
        await bare.close()


async def test_a_row_the_database_refuses_does_not_block_the_others(db: Database) -> None:
    writer, registry = _writer(db, batch_size=10, flush_interval_ms=10)
    rows = [_row(i) for i in range(10)]
    rows[4]["team"] = None  # NOT NULL: an IntegrityError no retry can fix
    for row in rows:
        writer.submit(row)
    writer.start()
    await writer.close()
    assert await _count(db) == 9
    assert _metric(registry, "gateway_ledger_rows_dropped_total", reason="refused") == 1
    assert _metric(registry, "gateway_ledger_rows_written_total") == 9


async def test_flush_writes_what_was_queued_before_it_despite_ongoing_traffic(db: Database) -> None:
    # The interval is a minute: flush() must not wait for it, nor for rows submitted after it.
    writer, _ = _writer(db, batch_size=100, flush_interval_ms=60_000)
    writer.start()
    for i in range(250):
        writer.submit(_row(i))
    stop = asyncio.Event()

    async def traffic() -> None:
        i = 1000
        while not stop.is_set():
            writer.submit(_row(i))
            i += 1
            await asyncio.sleep(0.001)

    background = asyncio.create_task(traffic())
    try:
        async with asyncio.timeout(20):
            await writer.flush()
        async with db.engine.connect() as conn:
            ids = set((await conn.execute(select(ledger.c.request_id))).scalars())
        assert {f"r{i}" for i in range(250)} <= ids
    finally:
        stop.set()
        await background
        await writer.close()


async def test_close_flushes_everything_queued(db: Database) -> None:
    # A long interval and a huge batch: without the shutdown flush nothing would be written.
    writer, _ = _writer(db, batch_size=50_000, flush_interval_ms=60_000)
    writer.start()
    for i in range(3000):
        writer.submit(_row(i))
    await asyncio.sleep(0.05)
    assert await _count(db) == 0
    await writer.close()
    assert await _count(db) == 3000


async def test_close_gives_up_after_the_timeout_and_reports_the_loss(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    bare = await open_database(f"sqlite:///{tmp_path / 'never.db'}", run_migrations=False)
    writer, registry = _writer(bare, batch_size=10, flush_interval_ms=10, shutdown_timeout_s=0.3)
    writer.start()
    for i in range(25):
        writer.submit(_row(i))
    with caplog.at_level(logging.ERROR, logger="gateway.ledger"):
        await writer.close()
    await bare.close()
    assert _metric(registry, "gateway_ledger_rows_dropped_total", reason="shutdown") == 25
    assert any("not written at shutdown" in r.getMessage() for r in caplog.records)
