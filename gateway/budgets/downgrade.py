"""Budget downgrades: past a share of its period's budget, a team's requests for one alias are
served by a cheaper one (``downgrade: {at_pct: 80, from: gpt-4o, to: gpt-4o-mini}`` in
``teams.yaml``).

The route stage asks :meth:`Downgrades.target` for each request (it is the stage's
``gateway.routing.Downgrades``); the answer costs one dict lookup for a team without a
downgrade or a request for another alias. The share is the team's settled spend over its
limit, read from the live budget counters (Redis, or this process' memory) and remembered for
``ttl_s`` per team, so a busy team costs one counter read per interval, not one per request.
Until the period's counters exist (its first budgeted request builds them), nothing is
downgraded. A counter read that fails downgrades nothing: the request is served as asked, and
the budget stage decides on its own whether to admit it.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from gateway.budgets.backend import BudgetBackend, BudgetUnavailable
from gateway.budgets.policy import BudgetBook, TeamBudget

if TYPE_CHECKING:
    from gateway.catalog import ModelAlias
    from gateway.context import RequestContext

log = logging.getLogger("gateway.budget")


class Downgrades:
    """Implements ``gateway.routing.Downgrades`` from the budget counters."""

    __slots__ = ("_backend", "_book", "_shares", "_ttl")

    def __init__(self, backend: BudgetBackend, book: BudgetBook, *, ttl_s: float = 0.5) -> None:
        self._backend = backend
        self._book = book
        self._ttl = ttl_s
        self._shares: dict[tuple[str, str], tuple[float, float]] = {}  # (team, window) -> (until, pct)

    async def target(self, ctx: RequestContext, alias: ModelAlias) -> ModelAlias | None:
        catalog = ctx.catalog
        team = catalog.team(ctx.team)
        budget_spec = team.spec.budget if team is not None else None
        rule = budget_spec.downgrade if budget_spec is not None else None
        if rule is None or rule.from_alias != alias.name or ctx.is_shadow:
            return None
        target = catalog.aliases.get(rule.to_alias)
        budget = self._book.for_team(catalog, ctx.team)
        if target is None or budget is None:
            return None
        return target if await self.spent_pct(budget) >= rule.at_pct else None

    async def spent_pct(self, budget: TeamBudget) -> float:
        """The team's settled spend this period, in percent of its limit (remembered ``ttl_s``)."""
        win = budget.window()
        key = (budget.team, win.label)
        now = time.monotonic()
        known = self._shares.get(key)
        if known is not None and known[0] > now:
            return known[1]
        pct = 0.0
        try:
            states = await self._backend.snapshot(budget, win)
        except BudgetUnavailable as exc:
            log.warning("budget counters unavailable: no downgrade", extra={"team": budget.team, "error": str(exc)})
            states = None
        limit = budget.team_scope.limit_nanos
        if states is not None and limit > 0:
            state = states.get(budget.team_scope.field)
            pct = 100.0 * state.spent / limit if state is not None else 0.0
        elif limit == 0:
            pct = 100.0
        if len(self._shares) > 4096:
            self._shares.clear()
        self._shares[key] = (now + self._ttl, pct)
        return pct
