"""Where each budget stands: the ``BudgetReporter`` behind ``GET /admin/budgets``, the finance
page and ``gateway budgets status``.

Numbers come from the live counters when they are built (Redis, or this process' memory) and
from the ledger otherwise (no request yet this period, Redis unreachable, the CLI of a gateway
without Redis); ``source`` says which. The forecast extrapolates the period's spend at its
average rate so far (measured over at least an hour, so the first minutes of a period do not
forecast nonsense).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from gateway.budgets.backend import BudgetBackend, BudgetUnavailable, ScopeState
from gateway.budgets.ledger_io import spent_by_field
from gateway.budgets.policy import BudgetBook, Scope, TeamBudget, Window
from gateway.pricing import from_nanos
from gateway.storage import Database

if TYPE_CHECKING:
    from gateway.catalog import Catalog

_MIN_RATE_WINDOW = timedelta(hours=1)


class BudgetStatus:
    """Implements ``gateway.features.BudgetReporter``.

    Usage::

        reporter = BudgetStatus(backend, db, lambda: runtime.catalog, book)
        rows = await reporter.statuses("demo")
    """

    def __init__(
        self, backend: BudgetBackend | None, db: Database, catalog: Callable[[], Catalog], book: BudgetBook
    ) -> None:
        self._backend = backend
        self._db = db
        self._catalog = catalog
        self._book = book

    async def statuses(self, team: str | None = None) -> list[dict[str, Any]]:
        """Per team and sub-budget: limit, spent, reserved, remaining and forecast (USD), reset time."""
        now = datetime.now(UTC)
        rows: list[dict[str, Any]] = []
        budgets = self._book.budgets(self._catalog())
        for name in sorted(budgets):
            if team is not None and name != team:
                continue
            budget = budgets[name]
            win = budget.window(now)
            states, source = await self._states(budget, win)
            for scope in budget.all_scopes():
                rows.append(_row(budget, scope, win, states.get(scope.field, ScopeState(0, 0)), now, source))
        return rows

    async def _states(self, budget: TeamBudget, win: Window) -> tuple[dict[str, ScopeState], str]:
        if self._backend is not None:
            try:
                live = await self._backend.snapshot(budget, win)
            except BudgetUnavailable:
                live = None
            if live is not None and all(scope.field in live for scope in budget.all_scopes()):
                return live, self._backend.name
        spent = await spent_by_field(self._db, budget, win)
        return {field: ScopeState(amount, 0) for field, amount in spent.items()}, "ledger"


def _row(
    budget: TeamBudget, scope: Scope, win: Window, state: ScopeState, now: datetime, source: str
) -> dict[str, Any]:
    elapsed = max(now - win.start, min(_MIN_RATE_WINDOW, win.end - win.start))
    length = win.end - win.start
    forecast = state.spent * (length / elapsed)
    limit = scope.limit_nanos
    return {
        "team": budget.team,
        "scope": scope.label,
        "period": win.period,
        "period_start": win.start.isoformat().replace("+00:00", "Z"),
        "resets_at": win.resets_at,
        "hard": scope.hard,
        "limit_usd": from_nanos(limit),
        "spent_usd": from_nanos(state.spent),
        "reserved_usd": from_nanos(state.reserved),
        "remaining_usd": from_nanos(max(limit - state.spent - state.reserved, 0)),
        "used_pct": round(state.spent * 100 / limit, 2) if limit else (100.0 if state.spent else 0.0),
        "forecast_usd": round(from_nanos(int(forecast)), 6),
        "source": source,
    }
