"""Strategy: weighted load balancing across an alias' deployments, the rest as fallbacks.

The first deployment is drawn by weight; the others follow by descending weight, so a
failing primary falls back to the next-most-trusted deployment. A weight of 0 keeps a
deployment as a fallback only. Each request draws afresh: this spreads load, it does not
pin a user to a deployment (rollouts do that, with ``uniform``).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import TYPE_CHECKING

from gateway.routing.plan import RoutingPlan

if TYPE_CHECKING:
    from gateway.catalog import Deployment, ModelAlias
    from gateway.context import RequestContext


def order_deployments(deployments: tuple[Deployment, ...], draw: float) -> tuple[Deployment, ...]:
    """``draw`` is uniform in [0, 1); the same draw always gives the same order."""
    if len(deployments) < 2:
        return deployments
    total = sum(d.weight for d in deployments)
    if total <= 0:
        return deployments
    point = draw * total
    chosen = deployments[-1]
    for deployment in deployments:
        if point < deployment.weight:
            chosen = deployment
            break
        point -= deployment.weight
    rest = sorted((d for d in deployments if d is not chosen), key=lambda d: -d.weight)
    return (chosen, *rest)


class Weighted:
    """The default strategy. ``draw`` is injectable so tests can pin the choice."""

    __slots__ = ("_draw",)

    def __init__(self, draw: Callable[[], float] = random.random) -> None:
        self._draw = draw

    def plan(self, ctx: RequestContext, alias: ModelAlias) -> RoutingPlan:
        return RoutingPlan(order_deployments(alias.deployments, self._draw()))
