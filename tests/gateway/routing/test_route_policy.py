"""The route stage's policy: request classes, the plan within policy, fallbacks and downgrades."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from gateway.auth import Principal
from gateway.budgets import BudgetBook, Downgrades
from gateway.budgets.backend import BudgetUnavailable, ScopeState
from gateway.catalog import Catalog, build_catalog
from gateway.config.policies import DataClassesFile, ModelsFile, PolicyBundle, TeamsFile
from gateway.context import Endpoint, Origin, RequestContext
from gateway.errors import DataClassForbidden, InvalidRequest
from gateway.rollouts.model import CANARY
from gateway.routing import RoutingPlan, order_deployments, permits, request_class
from gateway.routing.data_classes import build_policy, receivable
from gateway.routing.fallbacks import _weighted_first, within_policy
from support.budgets import catalog_of

CLASSES = {
    "classes": ["public", "internal", "restricted"],
    "rules": {"restricted": {"require_tags": {"region": ["eu"]}}},
}


def catalog(teams: dict[str, Any] | None = None, classes: dict[str, Any] | None = None) -> Catalog:
    models = {
        "aliases": {
            "main": {
                "deployments": [
                    {"provider": "mock", "model": "m-public"},
                    {"provider": "mock", "model": "m-eu", "max_data_class": "restricted", "tags": {"region": "eu"}},
                ],
                "fallbacks": ["spare", "hidden"],
            },
            "spare": {
                "deployments": [
                    {
                        "provider": "mock",
                        "model": "s-us",
                        "max_data_class": "restricted",
                        "tags": {"region": "us"},
                        "weight": 3,
                    },
                    {"provider": "mock", "model": "s-internal", "max_data_class": "internal"},
                ]
            },
            "hidden": {"deployments": [{"provider": "mock", "model": "h", "max_data_class": "internal"}]},
            "cheap": {"deployments": [{"provider": "mock", "model": "c", "max_data_class": "internal"}]},
        }
    }
    return build_catalog(
        PolicyBundle(
            models=ModelsFile.model_validate(models),
            teams=TeamsFile.model_validate(
                {
                    "teams": teams
                    if teams is not None
                    else {
                        "t": {"models": ["main", "spare", "cheap"]},
                        "secure": {"data_class": "internal"},
                    }
                }
            ),
            data_classes=DataClassesFile.model_validate(CLASSES if classes is None else classes),
        )
    )


def request(cat: Catalog, team: str = "t", header: str | None = None, prompt: str | None = None) -> RequestContext:
    ctx = RequestContext(
        request_id="r",
        endpoint=Endpoint.CHAT,
        raw_body=b"{}",
        authorization=None,
        catalog=cat,
        alias=cat.aliases["main"],
        principal=Principal("key_1", team, frozenset()),
    )
    ctx.data_class_header = header
    ctx.prompt_data_class = prompt
    return ctx


def test_the_class_is_the_highest_declared_and_never_below_the_team_default() -> None:
    cat = catalog()
    assert request_class(request(cat)) == "public"
    assert request_class(request(cat, "secure")) == "internal"
    assert request_class(request(cat, "secure", header="public")) == "internal"
    assert request_class(request(cat, "secure", header="restricted")) == "restricted"
    assert request_class(request(cat, prompt="internal", header="public")) == "internal"
    with pytest.raises(InvalidRequest) as caught:
        request_class(request(cat, header="secret"))
    assert caught.value.code == "unknown_data_class" and "public, internal, restricted" in caught.value.message
    with pytest.raises(InvalidRequest):
        request_class(request(cat, prompt="gone"))
    # Without classes the feature is off: no class, and a header asking for one is refused.
    off = catalog_of({"aliases": {"main": {"deployments": [{"provider": "mock", "model": "m"}]}}}, {"teams": {"t": {}}})
    assert request_class(request(off)) is None
    with pytest.raises(InvalidRequest):
        request_class(request(off, header="public"))


def test_a_deployment_receives_classes_up_to_its_ceiling_whose_tag_rules_it_meets() -> None:
    policy = build_policy(DataClassesFile.model_validate(CLASSES))
    assert receivable(policy, None, {}) == {"public"}
    assert receivable(policy, "restricted", {"region": "eu"}) == {"public", "internal", "restricted"}
    assert receivable(policy, "restricted", {"region": "us"}) == {"public", "internal"}
    cat = catalog()
    eu, us = cat.aliases["main"].deployments[1], cat.aliases["spare"].deployments[0]
    assert permits("restricted", eu) and not permits("restricted", us) and permits(None, us)


def test_the_plan_drops_forbidden_deployments_and_appends_permitted_fallbacks_the_team_may_use() -> None:
    cat = catalog()
    main = cat.aliases["main"]
    ctx = request(cat)
    ctx.data_class = "internal"
    plan = within_policy(RoutingPlan(main.deployments), ctx, main, lambda: 0.0)
    # m-public may not take internal data; `hidden` is not in the team's models.
    assert [d.model for d in plan.deployments] == ["m-eu", "s-us", "s-internal"]
    assert plan.withheld == 1
    ctx.data_class = "restricted"
    plan = within_policy(RoutingPlan(main.deployments), ctx, main, lambda: 0.0)
    assert [d.model for d in plan.deployments] == ["m-eu"] and plan.withheld == 3
    # A canary gets no fallbacks.
    canary = within_policy(RoutingPlan(main.deployments[1:], CANARY, "ro"), request(cat), main, lambda: 0.0)
    assert [d.model for d in canary.deployments] == ["m-eu"]
    spare = cat.aliases["spare"]
    ctx = request(cat)
    ctx.data_class = "restricted"
    with pytest.raises(DataClassForbidden) as caught:
        within_policy(RoutingPlan(spare.deployments), ctx, spare, lambda: 0.0)
    assert caught.value.status == 403 and caught.value.extra == {"data_class": "restricted"}


def test_fallback_order_is_the_weighted_order_without_a_sort_per_request() -> None:
    cat = catalog()
    group = tuple(sorted(cat.aliases["spare"].deployments, key=lambda d: -d.weight))
    total = sum(d.weight for d in group)
    for step in range(100):
        point = step / 100
        assert _weighted_first(group, total, point) == order_deployments(cat.aliases["spare"].deployments, point)


class Counters:
    name = "test"

    def __init__(self, pct: float | None, fail: bool = False) -> None:
        self.pct = pct
        self.fail = fail
        self.reads = 0

    async def snapshot(self, budget: Any, window: Any) -> dict[str, ScopeState] | None:
        self.reads += 1
        if self.fail:
            raise BudgetUnavailable("down")
        if self.pct is None:
            return None
        return {"t": ScopeState(int(budget.team_scope.limit_nanos * self.pct / 100), 0)}


def test_downgrade_past_the_threshold_only_for_the_named_alias() -> None:
    teams = {"t": {"budget": {"limit_usd": 10, "downgrade": {"at_pct": 80, "from": "main", "to": "cheap"}}}}
    cat = catalog(teams=teams)

    async def target(
        pct: float | None, alias: str = "main", *, fail: bool = False, origin: Origin = Origin.CALLER
    ) -> str | None:
        downgrades = Downgrades(Counters(pct, fail), BudgetBook(), ttl_s=0)  # type: ignore[arg-type]
        ctx = request(cat)
        ctx.origin = origin
        found = await downgrades.target(ctx, cat.aliases[alias])
        return found.name if found is not None else None

    assert asyncio.run(target(79.9)) is None
    assert asyncio.run(target(80)) == "cheap"
    assert asyncio.run(target(95, alias="spare")) is None
    assert asyncio.run(target(None)) is None  # counters not built yet this period
    assert asyncio.run(target(95, fail=True)) is None  # unreadable: served as asked
    assert asyncio.run(target(95, origin=Origin.SHADOW)) is None


def test_the_spend_share_is_read_once_per_interval() -> None:
    teams = {"t": {"budget": {"limit_usd": 10, "downgrade": {"at_pct": 50, "from": "main", "to": "cheap"}}}}
    cat = catalog(teams=teams)
    counters = Counters(60)
    downgrades = Downgrades(counters, BudgetBook(), ttl_s=60)  # type: ignore[arg-type]

    async def many() -> None:
        for _ in range(10):
            assert await downgrades.target(request(cat), cat.aliases["main"]) is cat.aliases["cheap"]

    asyncio.run(many())
    assert counters.reads == 1


def test_a_prompt_declares_its_class_without_changing_the_hash_of_prompts_that_do_not() -> None:
    from gateway.prompts.resolver import prepare
    from gateway.prompts.source import PromptSpec, canonical_content

    plain = PromptSpec.model_validate({"name": "p", "model": "main", "messages": [{"role": "user", "content": "x"}]})
    assert "data_class" not in canonical_content(plain)  # the bytes pushed before classes existed
    declared = plain.model_copy(update={"data_class": "restricted"})
    assert '"data_class":"restricted"' in canonical_content(declared)
    assert prepare(declared, 1).data_class == "restricted" and prepare(plain, 1).data_class is None


def test_the_prompt_is_counted_for_windows_only_when_its_size_could_reach_one() -> None:
    from gateway.usage.stage import _window_may_matter

    cat = catalog_of({"aliases": {
        "w": {"deployments": [{"provider": "mock", "model": "m", "max_input_tokens": 100},
                              {"provider": "mock", "model": "n"}]},
        "e": {"kind": "embedding", "deployments": [{"provider": "mock", "model": "e", "max_input_tokens": 10}]},
    }}, {"teams": {"t": {}}})

    def ctx(body: bytes, endpoint: Endpoint = Endpoint.CHAT, alias: str = "w") -> RequestContext:
        found = RequestContext(request_id="r", endpoint=endpoint, raw_body=body, authorization=None, catalog=cat)
        found.deployments = cat.aliases[alias].deployments
        return found

    assert not _window_may_matter(ctx(b"x" * 40))
    assert _window_may_matter(ctx(b"x" * 43))
    assert not _window_may_matter(ctx(b"x" * 1000, Endpoint.EMBEDDINGS, "e"))  # a limit per input, not per batch
    rendered = ctx(b"{}")
    rendered.prompt_name = "p"  # a rendered prompt is measured as rendered
    rendered.body = {"messages": [{"role": "user", "content": "y" * 200}]}
    assert _window_may_matter(rendered)
