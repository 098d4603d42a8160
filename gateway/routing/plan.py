"""What the route stage decides for a request: a plan, made by a routing strategy.

A strategy is one module (``weighted.py``, ``rollout.py``, ``shadow.py``) with a
``plan(ctx, alias) -> RoutingPlan`` method. The route stage asks it and applies the answer;
it never draws anything itself, so a new way to route adds a strategy and leaves the stage as
it is.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from gateway.catalog import Deployment, ModelAlias
    from gateway.context import RequestContext


@dataclass(frozen=True, slots=True)
class ShadowCopy:
    """A copy of the request to send once the primary answer is delivered, never answering anyone.

    ``target`` is a model alias or ``prompt:NAME@vN``; ``rule`` names the policy that asked for
    it (for reports and metrics).
    """

    target: str
    rule: str


@dataclass(frozen=True, slots=True)
class RoutingPlan:
    """Deployments to try in order (the first is the choice, the rest fallbacks), the variant
    they belong to and the rollout that chose it (both ``None`` outside a rollout), shadow
    copies to send afterwards, and how many deployments the request's data class withheld
    (so that when every permitted one fails, the caller learns the rest were forbidden)."""

    deployments: tuple[Deployment, ...]
    variant: str | None = None
    rollout_id: str | None = None
    shadows: tuple[ShadowCopy, ...] = ()
    withheld: int = 0


class RoutingStrategy(Protocol):
    def plan(self, ctx: RequestContext, alias: ModelAlias) -> RoutingPlan:
        """The plan for ``ctx`` on ``alias``; must not await (routing costs microseconds)."""
        ...
