"""The shadow strategy and its policy: which requests get copies, how many, and what the
catalog refuses to build."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.auth import Principal
from gateway.catalog import Catalog, build_catalog
from gateway.config.policies import ModelsFile, PolicyBundle, TeamsFile, load_policies
from gateway.config.rollouts import RolloutsFile
from gateway.config.shadows import ShadowsFile
from gateway.config.yamlfile import ConfigError
from gateway.context import Endpoint, Origin, RequestContext
from gateway.rollouts import RolloutBook
from gateway.rollouts.state import RolloutState
from gateway.routing import RolloutStrategy, RoutingPlan, ShadowCopy, ShadowStrategy, Weighted

MODELS = {
    "aliases": {
        "chat": {"deployments": [{"provider": "mock", "model": "a"}, {"provider": "mock", "model": "b", "weight": 0}]},
        "big": {"deployments": [{"provider": "mock", "model": "big"}]},
        "other": {"deployments": [{"provider": "mock", "model": "other"}]},
        "embed": {"kind": "embedding", "deployments": [{"provider": "mock", "model": "e", "free": True}]},
    }
}
ROLLOUT = {"target": {"alias": "chat", "canary": {"alias": "other"}}, "steps": [{"weight": 50}]}


def catalog(shadows: dict[str, Any], rollouts: dict[str, Any] | None = None) -> Catalog:
    return build_catalog(
        PolicyBundle(
            models=ModelsFile.model_validate(MODELS),
            teams=TeamsFile.model_validate({"teams": {"t": {}}}),
            rollouts=RolloutsFile.model_validate({"rollouts": rollouts or {}}),
            shadows=ShadowsFile.model_validate({"shadows": shadows}),
        )
    )


def request(
    cat: Catalog, *, origin: Origin = Origin.CALLER, prompt: tuple[str, str] | None = None, user: str = "u"
) -> RequestContext:
    ctx = RequestContext(
        request_id="r",
        endpoint=Endpoint.CHAT,
        raw_body=b"{}",
        authorization=None,
        catalog=cat,
        origin=origin,
        alias=cat.aliases["chat"],
    )
    ctx.principal = Principal("key_1", "t", frozenset())
    ctx.user = user
    if prompt is not None:
        ctx.prompt_name, ctx.prompt_label = prompt
    return ctx


def always(_: float = 0.0) -> float:
    return 0.0


def test_no_rules_leaves_the_inner_plan_untouched() -> None:
    cat = catalog({})
    inner = Weighted(draw=always)
    plan = ShadowStrategy(inner, draw=always).plan(request(cat), cat.aliases["chat"])
    assert plan == inner.plan(request(cat), cat.aliases["chat"])
    assert plan.shadows == ()


def test_rules_on_the_alias_and_the_prompt_label_both_copy() -> None:
    cat = catalog(
        {
            "to-big": {"target": "big", "sample_rate": 1.0, "traffic": {"alias": "chat"}},
            "to-v3": {
                "target": "prompt:answer@v3",
                "sample_rate": 1.0,
                "traffic": {"prompt": "answer", "label": "beta"},
            },
            "elsewhere": {"target": "big", "sample_rate": 1.0, "traffic": {"alias": "other"}},
        }
    )
    strategy = ShadowStrategy(Weighted(draw=always), draw=always)
    plain = strategy.plan(request(cat), cat.aliases["chat"])
    assert plain.shadows == (ShadowCopy("big", "to-big"),)
    assert [d.model for d in plain.deployments] == ["a", "b"]  # routing itself is the inner strategy's
    prompted = strategy.plan(request(cat, prompt=("answer", "beta")), cat.aliases["chat"])
    assert prompted.shadows == (ShadowCopy("big", "to-big"), ShadowCopy("prompt:answer@v3", "to-v3"))
    production = strategy.plan(request(cat, prompt=("answer", "production")), cat.aliases["chat"])
    assert production.shadows == (ShadowCopy("big", "to-big"),)


@pytest.mark.parametrize("origin", [Origin.EVAL, Origin.SHADOW])
def test_internal_requests_are_never_copied(origin: Origin) -> None:
    cat = catalog({"to-big": {"target": "big", "sample_rate": 1.0, "traffic": {"alias": "chat"}}})
    plan = ShadowStrategy(Weighted(draw=always), draw=always).plan(request(cat, origin=origin), cat.aliases["chat"])
    assert plan.shadows == ()


def test_the_sample_rate_is_the_share_copied() -> None:
    cat = catalog({"to-big": {"target": "big", "sample_rate": 0.25, "traffic": {"alias": "chat"}}})
    draws = iter([i / 1000 for i in range(1000)])
    strategy = ShadowStrategy(Weighted(draw=always), draw=lambda: next(draws))
    copied = sum(bool(strategy.plan(request(cat), cat.aliases["chat"]).shadows) for _ in range(1000))
    assert copied == 250


def test_a_rule_on_a_rollout_follows_its_variant() -> None:
    cat = catalog(
        {
            "canary-only": {"target": "big", "sample_rate": 1.0, "traffic": {"rollout": "ro", "variant": "canary"}},
            "both": {"target": "big", "sample_rate": 1.0, "traffic": {"rollout": "ro"}},
        },
        rollouts={"ro": ROLLOUT},
    )
    book = RolloutBook({"ro": RolloutState("ro", "running", step=0, revision=1)})  # type: ignore[arg-type]
    strategy = ShadowStrategy(RolloutStrategy(book, draw=always), draw=always)
    seen: dict[str, set[str]] = {}
    for index in range(200):
        plan: RoutingPlan = strategy.plan(request(cat, user=f"user-{index}"), cat.aliases["chat"])
        assert plan.rollout_id == "ro" and plan.variant is not None
        seen.setdefault(plan.variant, set()).add(",".join(copy.rule for copy in plan.shadows))
    assert seen == {"canary": {"canary-only,both"}, "stable": {"both"}}


@pytest.mark.parametrize(
    ("rules", "problem"),
    [
        (
            {"x": {"target": "nope", "sample_rate": 1, "traffic": {"alias": "chat"}}},
            "shadows.x.target: no model alias 'nope'",
        ),
        ({"x": {"target": "embed", "sample_rate": 1, "traffic": {"alias": "chat"}}}, "shadows.x.target: 'embed' is an"),
        (
            {"x": {"target": "big", "sample_rate": 1, "traffic": {"alias": "nope"}}},
            "shadows.x.traffic.alias: no model alias",
        ),
        (
            {"x": {"target": "big", "sample_rate": 1, "traffic": {"rollout": "nope"}}},
            "shadows.x.traffic.rollout: no rollout",
        ),
    ],
)
def test_the_catalog_names_what_a_rule_refers_to_that_does_not_exist(rules: dict[str, Any], problem: str) -> None:
    with pytest.raises(ConfigError) as raised:
        catalog(rules)
    assert any(problem in line for line in raised.value.problems), raised.value.problems


@pytest.mark.parametrize(
    "spec",
    [
        {"target": "prompt:answer@production", "sample_rate": 1, "traffic": {"alias": "chat"}},
        {"target": "big", "sample_rate": 0, "traffic": {"alias": "chat"}},
        {"target": "big", "sample_rate": 1.5, "traffic": {"alias": "chat"}},
        {"target": "big", "sample_rate": 1, "traffic": {"alias": "chat", "prompt": "p"}},
        {"target": "big", "sample_rate": 1, "traffic": {"alias": "chat", "variant": "canary"}},
        {"target": "big", "sample_rate": 1, "traffic": {"alias": "chat"}, "unknown": 1},
    ],
)
def test_the_schema_refuses_malformed_rules(spec: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        ShadowsFile.model_validate({"shadows": {"x": spec}})


def test_a_bad_shadows_file_is_reported_with_file_and_line(tmp_path: Path) -> None:
    (tmp_path / "models.yaml").write_text(yaml.safe_dump(MODELS))
    rule = "shadows:\n  x:\n    target: big\n    sample_rate: 2\n    traffic: {alias: chat}\n"
    (tmp_path / "shadows.yaml").write_text(rule)
    with pytest.raises(ConfigError) as raised:
        load_policies(tmp_path)
    assert [line.split("/")[-1] for line in raised.value.problems] == [
        "shadows.yaml:4: shadows.x.sample_rate: Input should be less than or equal to 1"
    ]
