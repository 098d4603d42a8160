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
from typing import TYPE_CHECKING

from gateway.rollouts.model import CANARY
from gateway.routing.data_classes import forbidden, permitted
from gateway.routing.plan import RoutingPlan

if TYPE_CHECKING:
    from gateway.catalog import Deployment, ModelAlias
    from gateway.context import RequestContext


def within_policy(plan: RoutingPlan, ctx: RequestContext, alias: ModelAlias, draw: Callable[[], float]) -> RoutingPlan:
    """``plan`` with forbidden deployments removed and permitted fallbacks appended."""
    data_class = ctx.data_class
    chosen = permitted(plan.deployments, data_class)
    withheld = len(plan.deployments) - len(chosen)
    if alias.fallbacks and plan.variant != CANARY:
        groups, forbidden_count = _fallback_groups(ctx, alias, data_class)
        point = draw()  # one draw orders every fallback alias: each spreads its own load by weight
        for group, total in groups:
            chosen += _weighted_first(group, total, point)
        withheld += forbidden_count
    elif not withheld:
        return plan  # the common case: nothing removed, nothing added
    if not chosen and data_class is not None and withheld:
        raise forbidden(data_class, alias.name)
    return RoutingPlan(chosen, plan.variant, plan.rollout_id, plan.shadows, withheld)


def _weighted_first(group: tuple[Deployment, ...], total: float, point: float) -> tuple[Deployment, ...]:
    """``group`` (sorted by descending weight) with one deployment drawn by weight first: the
    order ``order_deployments`` gives, without sorting per request."""
    if len(group) < 2 or total <= 0:
        return group
    left = point * total
    for index, deployment in enumerate(group):
        if left < deployment.weight:
            return group if index == 0 else (deployment, *group[:index], *group[index + 1 :])
        left -= deployment.weight
    return (group[-1], *group[:-1])


Groups = tuple[tuple[tuple["Deployment", ...], float], ...]


def _fallback_groups(ctx: RequestContext, alias: ModelAlias, data_class: str | None) -> tuple[Groups, int]:
    """The permitted deployments of each fallback alias the team may use (by descending weight,
    with their total weight), in order, and how many the class withheld; remembered per (team,
    class) on the alias, since a catalog never changes."""
    key = (ctx.team, data_class)
    found = alias.fallbacks_seen.get(key)
    if found is not None:
        return found
    catalog = ctx.catalog
    team = catalog.team(ctx.team)
    groups: list[tuple[tuple[Deployment, ...], float]] = []
    withheld = 0
    for name in alias.fallbacks:
        fallback = catalog.aliases.get(name)
        if fallback is None or team is None or not team.allows_model(name):
            continue
        allowed = permitted(fallback.deployments, data_class)
        withheld += len(fallback.deployments) - len(allowed)
        if allowed:
            ordered = tuple(sorted(allowed, key=lambda d: -d.weight))
            groups.append((ordered, sum(d.weight for d in ordered)))
    found = (tuple(groups), withheld)
    if len(alias.fallbacks_seen) >= 4096:  # teams come from keys, classes from policy: bounded anyway
        alias.fallbacks_seen.clear()
    alias.fallbacks_seen[key] = found
    return found
