"""Weighted load balancing across an alias' deployments, with the rest as fallbacks.

The first deployment is drawn by weight; the others follow by descending weight, so a
failing primary falls back to the next-most-trusted deployment. A weight of 0 keeps a
deployment as a fallback only.
"""

from __future__ import annotations

import random

from gateway.catalog import Deployment
from gateway.context import Reply, RequestContext
from gateway.pipeline_types import Handler


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


class Route:
    async def __call__(self, ctx: RequestContext, call_next: Handler) -> Reply:
        assert ctx.alias is not None, "route runs after resolve"
        ctx.deployments = order_deployments(ctx.alias.deployments, random.random())
        return await call_next(ctx)
