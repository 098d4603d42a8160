"""Stage 5, route: ask the routing strategy for a plan and apply it to the request.

The plan's deployments become ``ctx.deployments`` (tried in order by the upstream stage), its
variant and rollout id go on the context for the ledger and traces, and the whole plan stays
on ``ctx.plan`` for whoever acts on its shadow copies after the answer. A request in a rollout
answers with ``x-gateway-variant`` and ``x-gateway-rollout``.
"""

from __future__ import annotations

from gateway.context import Reply, RequestContext
from gateway.pipeline_types import Handler
from gateway.routing.plan import RoutingStrategy


class Route:
    __slots__ = ("_strategy",)

    def __init__(self, strategy: RoutingStrategy) -> None:
        self._strategy = strategy

    async def __call__(self, ctx: RequestContext, call_next: Handler) -> Reply:
        alias = ctx.alias
        assert alias is not None, "route runs after resolve"
        plan = self._strategy.plan(ctx, alias)
        ctx.plan = plan
        ctx.deployments = plan.deployments
        ctx.variant = plan.variant
        ctx.rollout_id = plan.rollout_id
        if plan.rollout_id is not None:
            ctx.extra_headers.append((b"x-gateway-rollout", plan.rollout_id.encode()))
            ctx.extra_headers.append((b"x-gateway-variant", (plan.variant or "").encode()))
        return await call_next(ctx)
