"""Stage 5, route: the request's data class, a budget downgrade, then the strategy's plan.

1. The request's data class (``gateway.routing.data_classes``): the highest of the team's
   default, the prompt's and the caller's ``x-data-class``; an unknown class is a 400.
2. A budget downgrade (``downgrade`` in a team's budget, see ``gateway.budgets.downgrade``):
   past its share of the period's budget, the alias asked for is replaced by a cheaper one,
   which answers with ``x-gateway-downgraded: FROM->TO``. A target none of whose deployments
   may receive the request's class is not used (the request stays on the alias asked for).
3. The strategy's plan, passed through ``within_policy`` (``fallbacks.py``): deployments the
   class forbids removed, the alias' permitted fallbacks appended; none left is a 403.

The plan's deployments become ``ctx.deployments`` (tried in order by the upstream stage), its
variant and rollout id go on the context for the ledger and traces, and the whole plan stays
on ``ctx.plan`` for whoever acts on its shadow copies after the answer. A request in a rollout
answers with ``x-gateway-variant`` and ``x-gateway-rollout``.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from gateway.context import Reply, RequestContext
from gateway.pipeline_types import Handler
from gateway.routing.data_classes import permitted, request_class
from gateway.routing.fallbacks import within_policy
from gateway.routing.plan import RoutingStrategy

if TYPE_CHECKING:
    from gateway.catalog import ModelAlias


class Downgrades(Protocol):
    """Which alias serves ``alias`` for this request instead, by the team's budget (or None)."""

    async def target(self, ctx: RequestContext, alias: ModelAlias) -> ModelAlias | None: ...


class Route:
    __slots__ = ("_downgrades", "_draw", "_strategy")

    def __init__(
        self,
        strategy: RoutingStrategy,
        *,
        downgrades: Downgrades | None = None,
        draw: Callable[[], float] = random.random,
    ) -> None:
        self._strategy = strategy
        self._downgrades = downgrades
        self._draw = draw  # orders the fallback aliases' deployments by weight

    async def __call__(self, ctx: RequestContext, call_next: Handler) -> Reply:
        alias = ctx.alias
        assert alias is not None, "route runs after resolve"
        ctx.data_class = request_class(ctx)
        if self._downgrades is not None:
            target = await self._downgrades.target(ctx, alias)
            if target is not None and permitted(target.deployments, ctx.data_class):
                ctx.downgraded_from = alias.name
                ctx.alias = alias = target
                ctx.extra_headers.append((b"x-gateway-downgraded", f"{ctx.downgraded_from}->{alias.name}".encode()))
        plan = within_policy(self._strategy.plan(ctx, alias), ctx, alias, self._draw)
        ctx.plan = plan
        ctx.deployments = plan.deployments
        ctx.variant = plan.variant
        ctx.rollout_id = plan.rollout_id
        if plan.rollout_id is not None:
            ctx.extra_headers.append((b"x-gateway-rollout", plan.rollout_id.encode()))
            ctx.extra_headers.append((b"x-gateway-variant", (plan.variant or "").encode()))
        return await call_next(ctx)
