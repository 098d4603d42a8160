"""The plan within policy: the data-class rule on every deployment, then the alias' fallbacks.

Whatever strategy drew the plan (weighted, a rollout), the route stage passes it through
:func:`within_policy`:

1. deployments the request's data class forbids are removed (``gateway.routing.data_classes``);
2. the alias' ``fallbacks`` (``models.yaml``) are appended, alias by alias in the order listed,
   each one's deployments ordered by its own weighted draw and filtered by the same rule, and
   only aliases the caller's team may use. The upstream stage reaches them only when every
   deployment before them failed before the caller saw a byte (connection error, timeout,
   429, 5xx): a 400 from the first alias is the caller's and is never retried elsewhere.

A rollout's canary gets no fallbacks: its failures must count against the canary (the same
reason it never falls back to stable). A plan left with no deployment because of the rule is
a 403 ``data_class_forbidden`` naming the class; so is a request whose permitted deployments
all failed while the rule withheld others (``RoutingPlan.withheld``, read by the upstream
stage): no permitted deployment is left, and the caller learns why.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING

from gateway.rollouts.model import CANARY
from gateway.routing.data_classes import forbidden, permitted
from gateway.routing.plan import RoutingPlan
from gateway.routing.weighted import order_deployments

if TYPE_CHECKING:
    from gateway.catalog import Deployment, ModelAlias
    from gateway.context import RequestContext


def within_policy(plan: RoutingPlan, ctx: RequestContext, alias: ModelAlias, draw: Callable[[], float]) -> RoutingPlan:
    """``plan`` with forbidden deployments removed and permitted fallbacks appended."""
    data_class = ctx.data_class
    chosen = permitted(plan.deployments, data_class)
    withheld = len(plan.deployments) - len(chosen)
    fallbacks = alias.fallbacks
    if fallbacks and plan.variant != CANARY:
        extra, forbidden_count = _fallback_deployments(ctx, fallbacks, data_class, draw)
        chosen += extra
        withheld += forbidden_count
    if not chosen and data_class is not None and withheld:
        raise forbidden(data_class, alias.name)
    if not withheld and not fallbacks:
        return plan  # the common case: nothing removed, nothing added
    return replace(plan, deployments=chosen, withheld=withheld)


def _fallback_deployments(
    ctx: RequestContext, names: tuple[str, ...], data_class: str | None, draw: Callable[[], float]
) -> tuple[tuple[Deployment, ...], int]:
    """The permitted deployments of the fallback aliases, in order, and how many were forbidden."""
    catalog = ctx.catalog
    team = catalog.team(ctx.team)
    found: list[Deployment] = []
    withheld = 0
    for name in names:
        fallback = catalog.aliases.get(name)
        if fallback is None or team is None or not team.allows_model(name):
            continue
        allowed = permitted(order_deployments(fallback.deployments, draw()), data_class)
        withheld += len(fallback.deployments) - len(allowed)
        found.extend(allowed)
    return tuple(found), withheld
