"""Strategy: progressive rollouts, sticky per subject, else the weighted strategy.

For a request on an alias with a rollout (``policies/rollouts.yaml``) whose ``match`` takes the
request and which routes anything now (``RolloutBook.weight``), the variant is
``canary`` when ``uniform(rollout_id, subject) < weight`` and ``stable`` otherwise. The subject
is the request's ``user``, else its ``x-session-id``, else (``subject_fallback: key``) its key,
else the request itself (``gateway.rollouts.model.subject_of``). Because the draw is fixed per
subject, every replica agrees, a subject keeps its variant while the weight stays, and raising
the weight only moves subjects from stable to canary.

- **stable** routes to the alias' stable deployments by the weighted draw, with fallbacks
  among them;
- **canary** routes to the canary's deployments only: it never falls back to stable, so that
  the canary's failures count against the canary. The data-class rule binds it: a request
  whose class no canary deployment may receive is routed as stable instead (it cannot take
  part in this rollout), never to a forbidden canary.

A prompt rollout picks its variant earlier, in the resolve stage (a version is rendered
there), and leaves it on the context; this strategy then keeps that variant and rollout id on
the plan and routes the version's alias by weight. The first matching rollout of an alias
wins (declaration order).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import TYPE_CHECKING

from gateway.rollouts.model import CANARY, STABLE, subject_of
from gateway.routing.data_classes import permitted
from gateway.routing.plan import RoutingPlan
from gateway.routing.uniform import uniform
from gateway.routing.weighted import Weighted, order_deployments

if TYPE_CHECKING:
    from gateway.catalog import ModelAlias
    from gateway.context import RequestContext
    from gateway.rollouts.book import RolloutBook
    from gateway.rollouts.model import Rollout


def assign(rollout: Rollout, ctx: RequestContext, weight: float) -> str:
    """``canary`` or ``stable`` for this request at this canary weight (a share in [0, 1]):
    canary when ``uniform(rollout.id, subject) < weight``, so raising the weight only ever
    moves subjects from stable to canary. Prompt rollouts use it too (in the resolve stage)."""
    if weight >= 1.0:
        return CANARY
    if weight <= 0.0:
        return STABLE
    return CANARY if uniform(rollout.id, subject_of(rollout, ctx)) < weight else STABLE


class RolloutStrategy:
    """The runtime's strategy: rollouts first, ``fallback`` (weighted) for everything else."""

    __slots__ = ("_book", "_draw", "_fallback")

    def __init__(self, book: RolloutBook, fallback: Weighted | None = None,
                 draw: Callable[[], float] | None = None) -> None:
        self._book = book
        self._fallback = fallback or Weighted()
        self._draw = draw or random.random

    def plan(self, ctx: RequestContext, alias: ModelAlias) -> RoutingPlan:
        if ctx.rollout_id is not None:  # a prompt rollout chose in the resolve stage
            return RoutingPlan(self._fallback.plan(ctx, alias).deployments, ctx.variant, ctx.rollout_id)
        candidates = ctx.catalog.rollouts.by_alias.get(alias.name)
        if candidates:
            for rollout in candidates:
                weight = self._book.weight(rollout)
                if weight is None or not rollout.matches(ctx):
                    continue
                if assign(rollout, ctx, weight) == CANARY and permitted(rollout.canary, ctx.data_class):
                    canary = permitted(order_deployments(rollout.canary, self._draw()), ctx.data_class)
                    return RoutingPlan(canary, CANARY, rollout.id)
                return RoutingPlan(order_deployments(rollout.stable, self._draw()), STABLE, rollout.id)
        return self._fallback.plan(ctx, alias)
