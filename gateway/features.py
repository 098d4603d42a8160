"""What a feature's factory returns, and what the runtime does with it.

Each optional capability (the ledger, the cache, budgets, prompts, usage counting) has one
factory that takes exactly what it needs (settings, the database, a Redis connection, a way
to read the catalog in force) and returns a bundle: its pipeline stage, if it has one, the
steps to run at shutdown, readiness checks and catalog listeners. The runtime only assembles
bundles; no feature reaches into the runtime or imports it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from gateway.catalog import Catalog
    from gateway.pipeline_types import Stage

#: Reads the catalog in force now (policies are swapped at run time; never hold one).
CatalogSource = Callable[[], "Catalog"]
Closer = Callable[[], Awaitable[None]]


@dataclass
class Feature:
    stage: Stage | None = None
    # Run at shutdown. The runtime runs every feature's closers in reverse installation order.
    closers: list[Closer] = field(default_factory=list)
    # Named checks behind /health/ready (e.g. "redis").
    readiness: dict[str, Closer] = field(default_factory=dict)
    # Told of each newly applied catalog, in the loop.
    catalog_listeners: list[Callable[[Catalog], None]] = field(default_factory=list)


class BudgetReporter(Protocol):
    """What the reports page and `gateway budgets status` need from the budget feature."""

    async def statuses(self, team: str | None = None) -> list[dict[str, Any]]:
        """Per team (and sub-budget): period, limit/spent/reserved/remaining/forecast in USD, resets_at."""
        ...
