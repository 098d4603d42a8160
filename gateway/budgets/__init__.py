"""Per-team cost budgets that cannot be overspent, on one replica or many.

``build_budgets`` is the feature's factory: it picks the counter backend (Redis when
``redis.url`` is set, else in process) and returns the pipeline stage and the reporter (status
for the admin API, the CLI and the finance page), with its shutdown step. See
``gateway.budgets.stage`` for what a request goes through and ``redis_backend`` for how the
counters stay exact across replicas, dead processes and a Redis that lost its data.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import insert

from gateway.budgets.alerts import Alerts, BudgetMetrics, UsedRatioCollector
from gateway.budgets.backend import BudgetBackend, BudgetUnavailable, Refusal, Reservation
from gateway.budgets.downgrade import Downgrades
from gateway.budgets.memory_backend import MemoryBackend
from gateway.budgets.policy import BudgetBook, Scope, TeamBudget, Window, window
from gateway.budgets.redis_backend import RedisBackend
from gateway.budgets.stage import Budget, PromptCounter
from gateway.budgets.status import BudgetStatus
from gateway.features import CatalogSource, Closer, Feature
from gateway.redis.wire import RedisWire
from gateway.storage.schema import ledger as ledger_table

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from gateway.catalog import Catalog
    from gateway.config.settings import Settings
    from gateway.ledger import LedgerWriter
    from gateway.storage import Database

__all__ = [
    "Budget",
    "BudgetBackend",
    "BudgetBook",
    "BudgetFeature",
    "BudgetStatus",
    "BudgetUnavailable",
    "Downgrades",
    "MemoryBackend",
    "RedisBackend",
    "Refusal",
    "Reservation",
    "Scope",
    "TeamBudget",
    "Window",
    "build_budgets",
    "reporter_for",
    "window",
]

log = logging.getLogger("gateway.budget")


@dataclass
class BudgetFeature(Feature):
    reporter: BudgetStatus | None = None
    downgrades: Downgrades | None = None  # for the route stage: budget downgrades


async def build_budgets(
    settings: Settings,
    db: Database,
    *,
    catalog: CatalogSource,
    registry: CollectorRegistry,
    counter: PromptCounter,
    ledger: LedgerWriter | None,
    drain: Closer,
) -> BudgetFeature:
    """The budget feature (call inside the running loop).

    ``counter`` counts prompts for reservations (the usage stage: one tokenizer per encoding);
    ``ledger`` receives rows reconciled for reservations whose request died with its process;
    ``drain`` waits for requests whose count was deferred, so they settle before shutdown.
    """
    metrics = BudgetMetrics(registry)
    alerts = Alerts(metrics, webhook_timeout_s=settings.budgets.webhook_timeout_s)
    book = BudgetBook()
    registry.register(UsedRatioCollector(metrics, lambda: book.budgets(catalog())))
    writer = ledger
    flush = writer.flush if writer is not None else None
    backend: BudgetBackend
    if settings.redis.url:

        async def write_rows(rows: list[dict[str, Any]]) -> None:
            if writer is None:
                async with db.engine.begin() as conn:
                    await conn.execute(insert(ledger_table), rows)
                return
            for row in rows:
                if not writer.submit(row):
                    log.error("ledger refused a reconciled row", extra={"request_id": row["request_id"]})

        backend = RedisBackend(
            RedisWire(settings.redis.url, timeout_s=settings.budgets.timeout_ms / 1000),
            db,
            alerts,
            settings.budgets,
            budgets=lambda: book.budgets(catalog()).values(),
            write_rows=write_rows,
            flush_ledger=flush,
        )
    else:
        backend = MemoryBackend(db, alerts, flush_ledger=flush, rebuild_wait_s=settings.budgets.rebuild_wait_s)
        if settings.server.workers > 1 and book.budgets(catalog()):
            log.error("budgets without Redis are enforced per worker process: set redis.url for several workers")
    await backend.start()
    alerts.start()
    stage = Budget(
        backend, counter, book, metrics, default_max_output_tokens=settings.budgets.default_max_output_tokens
    )

    async def close() -> None:
        # Requests whose count was deferred (a stream without usage, tokenizer being built)
        # settle and write their ledger rows once counted: let them, then close.
        await drain()
        await backend.close()
        await alerts.close()

    # Runs before the ledger's final flush (closers run last-in first-out, and the ledger is
    # installed first): settlements and reconciled rows queued at shutdown still reach it.
    return BudgetFeature(
        stage=stage,
        closers=[close],
        reporter=BudgetStatus(backend, db, catalog, book),
        downgrades=Downgrades(backend, book),
    )


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
