"""Per-team cost budgets that cannot be overspent, on one replica or many.

``install_budgets(runtime)`` is the whole wiring: it verifies the tokenizer files every
configured model needs (start-up fails if one is missing; building them waits until something
needs them, see ``gateway.usage.tokens``), picks the counter backend (Redis when ``redis.url`` is
set, else in process), and sets ``runtime.budget`` (the pipeline stage) and
``runtime.budget_reporter`` (status for the admin API, the CLI and the finance page). See
``gateway.budgets.stage`` for what a request goes through and ``redis_backend`` for how the
counters stay exact across replicas, dead processes and a Redis that lost its data.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from sqlalchemy import insert

from gateway.budgets.alerts import Alerts, BudgetMetrics
from gateway.budgets.backend import BudgetBackend, BudgetUnavailable, Refusal, Reservation
from gateway.budgets.memory_backend import MemoryBackend
from gateway.budgets.policy import BudgetBook, Scope, TeamBudget, Window, window
from gateway.budgets.redis_backend import RedisBackend
from gateway.budgets.stage import Budget
from gateway.budgets.status import BudgetStatus
from gateway.redis.wire import RedisWire
from gateway.storage.schema import ledger
from gateway.usage.tokens import TokenCounter

if TYPE_CHECKING:
    from gateway.catalog import Catalog
    from gateway.config.settings import Settings
    from gateway.runtime import Runtime
    from gateway.storage import Database

__all__ = [
    "Budget",
    "BudgetBackend",
    "BudgetBook",
    "BudgetStatus",
    "BudgetUnavailable",
    "MemoryBackend",
    "RedisBackend",
    "Refusal",
    "Reservation",
    "Scope",
    "TeamBudget",
    "Window",
    "install_budgets",
    "reporter_for",
    "token_counter",
    "window",
]

log = logging.getLogger("gateway.budget")


def token_counter(settings: Settings) -> TokenCounter:
    directory = settings.tokens.encodings_dir
    return TokenCounter(settings.resolve_path(directory) if directory is not None else None)


async def install_budgets(runtime: Runtime) -> Budget:
    """Build the budget stage and reporter into a runtime being created (inside its loop)."""
    settings = runtime.settings
    tokens = token_counter(settings)
    # A missing encoding stops start-up here (the files are hashed: milliseconds). Nothing is
    # built yet: each encoding costs 25-45 MiB and ~0.5 s of CPU, and a gateway without budgets
    # may never need one (see the stage's use_catalog below).
    tokens.verify(runtime.catalog)
    metrics = BudgetMetrics(runtime.metrics.registry)
    alerts = Alerts(metrics, webhook_timeout_s=settings.budgets.webhook_timeout_s)
    book = BudgetBook()
    writer = runtime.ledger
    flush = writer.flush if writer is not None else None
    backend: BudgetBackend
    if settings.redis.url:

        async def write_rows(rows: list[dict[str, Any]]) -> None:
            if writer is None:
                async with runtime.db.engine.begin() as conn:
                    await conn.execute(insert(ledger), rows)
                return
            for row in rows:
                if not writer.submit(row):
                    log.error("ledger refused a reconciled row", extra={"request_id": row["request_id"]})

        backend = RedisBackend(
            RedisWire(settings.redis.url, timeout_s=settings.budgets.timeout_ms / 1000),
            runtime.db,
            alerts,
            settings.budgets,
            budgets=lambda: book.budgets(runtime.catalog).values(),
            write_rows=write_rows,
            flush_ledger=flush,
        )
    else:
        backend = MemoryBackend(runtime.db, alerts, flush_ledger=flush, rebuild_wait_s=settings.budgets.rebuild_wait_s)
        if settings.server.workers > 1 and book.budgets(runtime.catalog):
            log.error("budgets without Redis are enforced per worker process: set redis.url for several workers")
    await backend.start()
    alerts.start()
    stage = Budget(
        backend, tokens, book, metrics, default_max_output_tokens=settings.budgets.default_max_output_tokens
    )
    runtime.budget = stage
    runtime.budget_reporter = BudgetStatus(backend, runtime.db, lambda: runtime.catalog, book)
    # Budgeted teams' tokenizers are built in the background now and again on each policy change.
    stage.use_catalog(runtime.catalog)
    runtime.catalog_listeners.append(stage.use_catalog)

    async def close() -> None:
        # Requests whose count was deferred (a stream without usage, tokenizer being built)
        # settle and write their ledger rows once counted: let them, then close.
        await runtime.record.drain()
        await backend.close()
        await alerts.close()

    # Closers run last-in first-out: this runs before the ledger's final flush, so settlements
    # and reconciled rows queued at shutdown still reach it.
    runtime.closers.append(close)
    return stage


async def reporter_for(settings: Settings, db: Database, catalog: Catalog) -> tuple[BudgetStatus, RedisWire | None]:
    """A read-only reporter for the CLI: Redis' counters when configured, else the ledger.

    The caller closes the returned wire (if any). No background task is started.
    """
    book = BudgetBook()
    if not settings.redis.url:
        return BudgetStatus(None, db, lambda: catalog, book), None
    wire = RedisWire(settings.redis.url, timeout_s=settings.budgets.timeout_ms / 1000)
    alerts = Alerts(BudgetMetrics(None), webhook_timeout_s=settings.budgets.webhook_timeout_s)

    async def no_rows(rows: list[dict[str, Any]]) -> None:
        return None

    backend = RedisBackend(wire, db, alerts, settings.budgets, budgets=lambda: (), write_rows=no_rows)
    return BudgetStatus(backend, db, lambda: catalog, book), wire
