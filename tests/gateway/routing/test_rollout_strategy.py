"""The rollout strategy: sticky assignment, the share per step, match conditions, fallbacks."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.auth import Principal
from gateway.catalog import Catalog, build_catalog
from gateway.config.policies import ModelsFile, PolicyBundle, TeamsFile
from gateway.config.rollouts import RolloutsFile
from gateway.context import Endpoint, Origin, RequestContext
from gateway.rollouts import RolloutBook
from gateway.rollouts.state import RolloutState
from gateway.routing import RolloutStrategy, Weighted

MODELS = {"aliases": {
    "chat": {"deployments": [
        {"provider": "mock", "model": "stable-a", "weight": 1},
        {"provider": "mock", "model": "stable-b", "weight": 1},
        {"provider": "mock", "model": "candidate", "weight": 0},
    ]},
    "other": {"deployments": [{"provider": "mock", "model": "other-1"}]},
    "bigger": {"deployments": [{"provider": "mock", "model": "big-1"}, {"provider": "mock", "model": "big-2"}]},
}}


def catalog(rollouts: dict[str, Any]) -> Catalog:
    return build_catalog(PolicyBundle(
        models=ModelsFile.model_validate(MODELS), teams=TeamsFile.model_validate({"teams": {"t": {}, "u": {}}}),
        rollouts=RolloutsFile.model_validate({"rollouts": rollouts}),
    ))


def rollout(**overrides: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {"target": {"alias": "chat", "canary": {"deployment": 2}},
                            "steps": [{"weight": 10}, {"weight": 25}, {"weight": 50}, {"weight": 100}]}
    spec.update(overrides)
    return spec


def request(cat: Catalog, *, user: str | None = None, session: str | None = None, team: str = "t",
            key_id: str = "key_1", request_id: str = "r", label: str | None = None) -> RequestContext:
    ctx = RequestContext(request_id=request_id, endpoint=Endpoint.CHAT, raw_body=b"{}", authorization=None,
                         catalog=cat, alias=cat.aliases["chat"])
    ctx.principal = Principal(key_id, team, frozenset())
    ctx.user = user
    ctx.session_id = session
    ctx.prompt_label = label
    return ctx


def at_step(rollout_id: str, step: int, status: str = "running") -> RolloutBook:
    return RolloutBook({rollout_id: RolloutState(rollout_id, status, step=step, revision=1)})  # type: ignore[arg-type]


def test_a_user_keeps_one_variant_and_the_share_follows_the_step() -> None:
    cat = catalog({"ro": rollout()})
    alias = cat.aliases["chat"]
    users = [f"user-{i}" for i in range(20_000)]
    seen: dict[int, dict[str, str]] = {}
    for step, expected in [(0, 0.10), (1, 0.25), (2, 0.50)]:
        strategy = RolloutStrategy(at_step("ro", step))
        variants = {}
        for user in users:
            plan = strategy.plan(request(cat, user=user), alias)
            again = strategy.plan(request(cat, user=user, request_id="other"), alias)
            assert (plan.variant, plan.rollout_id) == (again.variant, "ro")
            variants[user] = plan.variant or ""
        share = sum(v == "canary" for v in variants.values()) / len(users)
        assert share == pytest.approx(expected, abs=0.015)
        seen[step] = variants
    # Raising the weight only ever moves users from stable to canary.
    for before, after in [(0, 1), (1, 2)]:
        assert not [u for u in users if seen[before][u] == "canary" and seen[after][u] == "stable"]


def test_canary_and_stable_route_to_their_own_deployments() -> None:
    cat = catalog({"ro": rollout()})
    alias = cat.aliases["chat"]
    strategy = RolloutStrategy(at_step("ro", 2), draw=lambda: 0.9)
    by_variant: dict[str, set[tuple[str, ...]]] = {"canary": set(), "stable": set()}
    for i in range(200):
        plan = strategy.plan(request(cat, user=f"u{i}"), alias)
        by_variant[plan.variant or ""].add(tuple(d.model for d in plan.deployments))
    # The canary never falls back to stable; stable keeps its fallback among stable deployments.
    assert by_variant == {"canary": {("candidate",)}, "stable": {("stable-b", "stable-a")}}


def test_a_canary_alias_serves_the_canary() -> None:
    cat = catalog({"ro": rollout(target={"alias": "chat", "canary": {"alias": "bigger"}}, steps=[{"weight": 100}])})
    plan = RolloutStrategy(RolloutBook(), draw=lambda: 0.0).plan(request(cat, user="x"), cat.aliases["chat"])
    assert (plan.variant, [d.model for d in plan.deployments]) == ("canary", ["big-1", "big-2"])


def test_the_subject_is_user_then_session_then_key_or_request() -> None:
    cat = catalog({"ro": rollout(steps=[{"weight": 50}]),
                   "by-key": rollout(steps=[{"weight": 50}], subject_fallback="key")})
    alias = cat.aliases["chat"]
    strategy = RolloutStrategy(RolloutBook())

    def variants(**given: Any) -> set[str | None]:
        return {strategy.plan(request(cat, request_id=f"r{i}", **given), alias).variant for i in range(64)}

    assert len(variants(user="alice")) == 1
    assert len(variants(session="s-1")) == 1
    assert variants() == {"canary", "stable"}  # no subject: each request draws on its own
    # The session is used only without a user: the same user in many sessions stays put.
    assert len({strategy.plan(request(cat, user="bob", session=f"s{i}"), alias).variant for i in range(64)}) == 1
    keyed = catalog({"by-key": rollout(steps=[{"weight": 50}], subject_fallback="key")})
    keyed_strategy = RolloutStrategy(RolloutBook())
    found = {keyed_strategy.plan(request(keyed, request_id=f"r{i}"), keyed.aliases["chat"]).variant
             for i in range(64)}
    assert len(found) == 1


def test_match_conditions_select_the_requests_that_take_part() -> None:
    cat = catalog({"ro": rollout(steps=[{"weight": 100}],
                                 match={"teams": ["t*"], "key_ids": ["key_1"], "labels": []})})
    alias = cat.aliases["chat"]
    strategy = RolloutStrategy(RolloutBook(), fallback=Weighted(lambda: 0.0))
    assert strategy.plan(request(cat, user="a"), alias).variant == "canary"
    left_out = [strategy.plan(request(cat, user="a", team="u"), alias),
                strategy.plan(request(cat, user="a", key_id="key_2"), alias)]
    for plan in left_out:
        assert (plan.variant, plan.rollout_id) == (None, None)
        assert [d.model for d in plan.deployments] == ["stable-a", "stable-b", "candidate"]
    labelled = catalog({"ro": rollout(steps=[{"weight": 100}], match={"labels": ["beta"]})})
    labelled_strategy = RolloutStrategy(RolloutBook())
    assert labelled_strategy.plan(request(labelled, label="beta"), labelled.aliases["chat"]).variant == "canary"
    assert labelled_strategy.plan(request(labelled, label=None), labelled.aliases["chat"]).variant is None


@pytest.mark.parametrize(("status", "variant"), [("pending", None), ("aborted", None), ("paused", "stable"),
                                                 ("promoted", None)])
def test_the_stored_status_decides_what_routes(status: str, variant: str | None) -> None:
    cat = catalog({"ro": rollout()})
    # "stable" at step 0 (10 %) for a user who draws above 0.1. A promoted rollout routes nothing
    # itself: the promotion rewrote the label or the alias, which now serves the canary.
    user = next(f"u{i}" for i in range(100)
                if RolloutStrategy(at_step("ro", 0)).plan(request(cat, user=f"u{i}"), cat.aliases["chat"]).variant
                == "stable")
    plan = RolloutStrategy(at_step("ro", 0, status)).plan(request(cat, user=user), cat.aliases["chat"])
    assert plan.variant == variant


def test_manual_rollouts_wait_and_other_aliases_are_untouched() -> None:
    cat = catalog({"ro": rollout(start="manual")})
    strategy = RolloutStrategy(RolloutBook(), fallback=Weighted(lambda: 0.0))
    assert strategy.plan(request(cat, user="a"), cat.aliases["chat"]).rollout_id is None
    other = strategy.plan(request(cat, user="a"), cat.aliases["other"])
    assert (other.variant, [d.model for d in other.deployments]) == (None, ["other-1"])


def test_a_variant_chosen_by_a_prompt_rollout_is_kept() -> None:
    cat = catalog({})
    ctx = request(cat, user="a")
    ctx.variant, ctx.rollout_id = "canary", "prompt-ro"
    plan = RolloutStrategy(RolloutBook()).plan(ctx, cat.aliases["chat"])
    assert (plan.variant, plan.rollout_id) == ("canary", "prompt-ro")


def test_internal_requests_never_take_part() -> None:
    cat = catalog({"ro": rollout(steps=[{"weight": 100}])})
    principal = Principal("key_1", "t", frozenset())
    for origin in (Origin.EVAL, Origin.SHADOW):
        ctx = RequestContext.internal(origin, principal, cat, {}, request_id="r")
        ctx.user = "a"
        plan = RolloutStrategy(RolloutBook(), fallback=Weighted(lambda: 0.0)).plan(ctx, cat.aliases["chat"])
        assert (plan.variant, plan.rollout_id) == (None, None)
