"""Routing: the uniform draw, the weighted strategy and the route stage applying a plan."""

from __future__ import annotations

import statistics
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.catalog import ModelAlias
from gateway.context import Endpoint, JsonReply, Reply, RequestContext
from gateway.routing import Route, RoutingPlan, ShadowCopy, Weighted, order_deployments, uniform
from support.budgets import catalog_of

CATALOG = catalog_of(
    {"aliases": {"trio": {"deployments": [
        {"provider": "mock", "model": "a", "weight": 1},
        {"provider": "mock", "model": "b", "weight": 3},
        {"provider": "mock", "model": "c", "weight": 0},
    ]}, "solo": {"deployments": [{"provider": "mock", "model": "only"}]}}},
    {"teams": {"t": {}}},
)


def context() -> RequestContext:
    return RequestContext(request_id="r", endpoint=Endpoint.CHAT, raw_body=b"{}", authorization=None,
                          catalog=CATALOG, alias=CATALOG.aliases["trio"])


# -- uniform -------------------------------------------------------------------------------------


@given(st.text(), st.text())
def test_uniform_is_in_the_unit_interval_and_deterministic(rollout: str, subject: str) -> None:
    value = uniform(rollout, subject)
    assert 0.0 <= value < 1.0
    assert uniform(rollout, subject) == value


def test_uniform_separates_the_two_strings() -> None:
    # Length-prefixed: moving a character across the boundary draws differently.
    assert uniform("ab", "c") != uniform("a", "bc")
    assert uniform("", "abc") != uniform("abc", "")
    assert uniform("rollout-1", "user") != uniform("rollout-2", "user")


def test_uniform_handles_empty_and_unusual_subjects() -> None:
    for subject in ["", "\x00", "ü" * 10_000, "\ud7ff"]:
        assert 0.0 <= uniform("r", subject) < 1.0


def test_uniform_spreads_evenly_and_independently_across_rollouts() -> None:
    users = [f"user-{i}" for i in range(20_000)]
    first = [uniform("rollout-a", u) for u in users]
    second = [uniform("rollout-b", u) for u in users]
    assert statistics.fmean(first) == pytest.approx(0.5, abs=0.01)
    # A 10 % canary takes ~10 % of users...
    share = sum(v < 0.1 for v in first) / len(users)
    assert share == pytest.approx(0.1, abs=0.01)
    # ...and a second rollout's 10 % is not the same people (independent draws: ~1 % overlap).
    both = sum(a < 0.1 and b < 0.1 for a, b in zip(first, second, strict=True)) / len(users)
    assert both == pytest.approx(0.01, abs=0.005)


# -- the weighted strategy -----------------------------------------------------------------------


def labels(plan: RoutingPlan) -> list[str]:
    return [d.model for d in plan.deployments]


@pytest.mark.parametrize(
    ("draw", "expected"),
    [(0.0, ["a", "b", "c"]), (0.2499, ["a", "b", "c"]), (0.25, ["b", "a", "c"]), (0.9999, ["b", "a", "c"])],
)
def test_weighted_draws_by_weight_and_keeps_the_rest_as_fallbacks(draw: float, expected: list[str]) -> None:
    plan = Weighted(lambda: draw).plan(context(), CATALOG.aliases["trio"])
    assert labels(plan) == expected
    assert (plan.variant, plan.rollout_id, plan.shadows) == (None, None, ())


def test_a_single_deployment_or_zero_weights_keep_the_declared_order() -> None:
    solo: ModelAlias = CATALOG.aliases["solo"]
    assert order_deployments(solo.deployments, 0.7) == solo.deployments
    zero = CATALOG.aliases["trio"].deployments[2:]
    assert order_deployments(zero * 2, 0.5) == zero * 2


# -- the stage -----------------------------------------------------------------------------------


class Fixed:
    def __init__(self, plan: RoutingPlan) -> None:
        self.plan_given = plan
        self.asked: list[tuple[str, str]] = []

    def plan(self, ctx: RequestContext, alias: ModelAlias) -> RoutingPlan:
        self.asked.append((ctx.request_id, alias.name))
        return self.plan_given


async def test_the_stage_applies_the_strategys_plan() -> None:
    deployments = CATALOG.aliases["trio"].deployments
    plan = RoutingPlan(deployments[::-1], variant="canary", rollout_id="ro-1",
                       shadows=(ShadowCopy("solo", "try-solo"),))
    strategy = Fixed(plan)
    seen: list[Any] = []

    async def upstream(ctx: RequestContext) -> Reply:
        seen.append((ctx.deployments, ctx.variant, ctx.rollout_id, ctx.plan))
        return JsonReply(200, orjson.dumps({}), {})

    ctx = context()
    await Route(strategy)(ctx, upstream)
    assert strategy.asked == [("r", "trio")]
    assert seen == [(deployments[::-1], "canary", "ro-1", plan)]
