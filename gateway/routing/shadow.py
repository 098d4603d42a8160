"""Strategy: another strategy's plan, plus the shadow copies the policy asks for.

For a caller's request, the rules of ``policies/shadows.yaml`` attached to its alias, to its
prompt and label, or to the rollout (and variant) its plan is in, each draw once: a rule with
``sample_rate: 0.05`` copies about one request in twenty. The draw is random per request, not
sticky: a shadow measures a model on a sample of the traffic, and nothing a caller sends (a
request id, a user) can make its request more or less likely to be copied. The copies go on
the plan (``RoutingPlan.shadows``); the shadow runner (``gateway.shadow.runner``) sends them
once the primary answer has been delivered.

Evaluation cases and shadow copies are never copied: only ``Origin.CALLER`` requests draw.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable
from typing import TYPE_CHECKING

from gateway.context import Origin
from gateway.routing.plan import RoutingPlan, RoutingStrategy, ShadowCopy

if TYPE_CHECKING:
    from gateway.catalog import ModelAlias
    from gateway.context import RequestContext


class ShadowStrategy:
    """Wraps ``inner`` (the runtime's: rollouts, else weighted). ``draw`` is injectable for tests."""

    __slots__ = ("_draw", "_inner")

    def __init__(self, inner: RoutingStrategy, draw: Callable[[], float] = random.random) -> None:
        self._inner = inner
        self._draw = draw

    def plan(self, ctx: RequestContext, alias: ModelAlias) -> RoutingPlan:
        plan = self._inner.plan(ctx, alias)
        index = ctx.catalog.shadows
        if not index or ctx.origin is not Origin.CALLER:
            return plan
        rules = index.rules_for(alias.name, ctx.prompt_name, ctx.prompt_label, plan.rollout_id, plan.variant)
        if not rules:
            return plan
        draw = self._draw
        copies = tuple(ShadowCopy(rule.target, rule.id) for rule in rules if draw() < rule.sample_rate)
        return dataclasses.replace(plan, shadows=copies) if copies else plan
