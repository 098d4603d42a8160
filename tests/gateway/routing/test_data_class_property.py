"""Property: no request is ever sent to a deployment its data class forbids.

Hypothesis draws policies (ordered classes, a tag rule), aliases with deployments (each with a
``max_data_class`` and a region tag), fallbacks between aliases, a team's default class and
allow-list, a rollout with a canary deployment, a budget downgrade, the request's header and
prompt classes, shadow rules (on the alias or on the rollout, to any alias), a shadow-style fork
of the request, and a failure pattern per deployment. Each case runs through the core handler
and the real parse, resolve, route and upstream stages, and the shadow copies through the real
shadow runner; a recording provider at the provider-call boundary notes every deployment
actually called, by the primary, its retries and fallbacks, the canary and the copies.

The oracle never asks the routing code: it reads the generated *specs* (the class index and
tags each deployment was declared with) and the expected request class, the highest of the
declared ones, and checks each recorded call against them.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import logging
from dataclasses import dataclass
from typing import Any
from unittest import mock

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from gateway.auth import Principal
from gateway.catalog import Catalog, Deployment, ModelAlias, build_catalog
from gateway.config.policies import DataClassesFile, ModelsFile, PolicyBundle, TeamsFile
from gateway.config.rollouts import RolloutsFile
from gateway.config.settings import ShadowSettings
from gateway.config.shadows import ShadowsFile
from gateway.context import Endpoint, JsonReply, Origin, Reply, RequestContext
from gateway.core import Core
from gateway.errors import DataClassForbidden, UpstreamError, UpstreamRejected, UpstreamTimeout
from gateway.parse.stage import ParseRequest
from gateway.pipeline import build_pipeline
from gateway.resolve.stage import Resolve
from gateway.rollouts import RolloutBook
from gateway.rollouts.state import RolloutState
from gateway.routing import RolloutStrategy, Route
from gateway.routing.shadow import ShadowStrategy
from gateway.shadow.feature import data_class_permits
from gateway.shadow.runner import ShadowMetrics, ShadowRunner
from gateway.upstream import CallUpstream
from gateway.upstream import stage as upstream_stage

CLASS_NAMES = ("public", "internal", "confidential", "restricted")
REGIONS = ("eu", "us", None)
ANSWER = {"choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}]}


@dataclass(frozen=True)
class DeploymentDraw:
    max_class: int | None  # index into the classes; None: the lowest (the default)
    region: str | None
    outcome: str  # ok | timeout | 503 | 429 | 400


@dataclass(frozen=True)
class Case:
    classes: int  # how many classes (0: data classes off)
    rule_class: int | None  # a class that requires region: eu
    aliases: list[list[DeploymentDraw]]
    fallbacks: list[list[int]]
    team_class: int | None
    team_models: list[int] | None  # aliases the team may use (None: all)
    canary: tuple[int, float] | None  # (deployment index of a0, canary share)
    downgrade_to: int | None  # alias that serves a0 instead
    header: int | None
    header_unknown: bool
    prompt_class: int | None
    fork: bool
    user: str
    shadows: list[tuple[int, str]]  # (target alias, traffic: "alias", "rollout", "canary" or "stable")


OUTCOMES = ("ok", "ok", "timeout", "503", "429", "400")
# One draw per case, reduced per use: building strategies inside the draw (st.lists, st.builds
# per case) cost 90 % of the run, and one draw per choice (~40 a case) still half of it. A case
# reads at most ~100 choices; hypothesis still shrinks the bytes.
CHOICES = st.binary(min_size=128, max_size=128)


@st.composite
def cases(draw: st.DrawFn) -> Case:
    choices = iter(draw(CHOICES))

    def pick(count: int) -> int:
        return next(choices) % count

    classes = pick(5)

    def some_class() -> int | None:
        value = pick(classes + 1) if classes else 0
        return None if value == classes or not classes else value

    alias_count = 1 + pick(4)
    aliases = [
        [DeploymentDraw(some_class(), REGIONS[pick(3)], OUTCOMES[pick(len(OUTCOMES))]) for _ in range(1 + pick(3))]
        for _ in range(alias_count)
    ]
    fallbacks = []
    for index in range(alias_count):
        others = [j for j in range(alias_count) if j != index]
        chosen = [j for j in others if pick(2)]
        fallbacks.append(chosen[::-1] if pick(2) else chosen)
    canary = None
    if len(aliases[0]) > 1 and pick(2):
        canary = (pick(len(aliases[0])), (0.1, 0.5, 1.0)[pick(3)])
    traffic = ("alias", "rollout", "canary", "stable") if canary is not None else ("alias",)
    shadows = [(pick(alias_count), traffic[pick(len(traffic))]) for _ in range(pick(3))]
    return Case(
        classes=classes,
        rule_class=some_class(),
        aliases=aliases,
        fallbacks=fallbacks,
        team_class=some_class(),
        team_models=None if pick(2) else [j for j in range(alias_count) if pick(2)],
        canary=canary,
        downgrade_to=(1 + pick(alias_count - 1)) if alias_count > 1 and pick(2) else None,
        header=some_class(),
        header_unknown=pick(20) == 0,
        prompt_class=some_class(),
        fork=bool(pick(2)),
        user=f"u{pick(4)}",
        shadows=shadows,
    )


def catalog_for(case: Case) -> Catalog:
    names = CLASS_NAMES[: case.classes]
    models: dict[str, Any] = {"aliases": {}}
    for index, deployments in enumerate(case.aliases):
        specs = []
        for number, d in enumerate(deployments):
            spec: dict[str, Any] = {"provider": "mock", "model": f"a{index}-d{number}", "retries": number % 2}
            if d.max_class is not None:
                spec["max_data_class"] = names[d.max_class]
            if d.region is not None:
                spec["tags"] = {"region": d.region}
            specs.append(spec)
        models["aliases"][f"a{index}"] = {"deployments": specs, "fallbacks": [f"a{j}" for j in case.fallbacks[index]]}
    team: dict[str, Any] = {}
    if case.team_class is not None:
        team["data_class"] = names[case.team_class]
    if case.team_models is not None:
        team["models"] = ["a0", *(f"a{j}" for j in case.team_models)]
    rules = {names[case.rule_class]: {"require_tags": {"region": ["eu"]}}} if case.rule_class is not None else {}
    rollouts: dict[str, Any] = {}
    if case.canary is not None:
        rollouts["ro"] = {
            "target": {"alias": "a0", "canary": {"deployment": case.canary[0]}},
            "steps": [{"weight": case.canary[1] * 100}],
        }
    shadows: dict[str, Any] = {}
    for number, (target, traffic) in enumerate(case.shadows):
        on: dict[str, Any] = {"alias": "a0"} if traffic == "alias" else {"rollout": "ro"}
        if traffic in ("canary", "stable"):
            on["variant"] = traffic
        shadows[f"s{number}"] = {"target": f"a{target}", "sample_rate": 1.0, "traffic": on}
    return build_catalog(
        PolicyBundle(
            models=ModelsFile.model_validate(models),
            teams=TeamsFile.model_validate({"teams": {"t": team}}),
            rollouts=RolloutsFile.model_validate({"rollouts": rollouts}),
            data_classes=DataClassesFile.model_validate({"classes": list(names), "rules": rules}),
            shadows=ShadowsFile.model_validate({"shadows": shadows}),
        )
    )


def may_receive(case: Case, deployment_id: str, rank: int | None) -> bool:
    """The oracle, from the generated specs only: declared ceiling and the tag rule."""
    if rank is None:
        return True
    alias, number = deployment_id.split("#")
    drawn = case.aliases[int(alias[1:])][int(number)]
    ceiling = drawn.max_class if drawn.max_class is not None else 0
    if rank > ceiling:
        return False
    return case.rule_class != rank or drawn.region == "eu"


def outcome_of(case: Case, deployment_id: str) -> str:
    alias, number = deployment_id.split("#")
    return case.aliases[int(alias[1:])][int(number)].outcome


def expected_rank(case: Case) -> int | None:
    if not case.classes:
        return None
    declared = [c for c in (case.team_class, case.header, case.prompt_class) if c is not None]
    return max(declared, default=0)


class Recorder:
    """The provider registry: records each deployment called, answers by the failure pattern."""

    def __init__(self, case: Case) -> None:
        self.case = case
        self.called: list[str] = []

    def for_deployment(self, deployment: Deployment) -> Recorder:
        return self

    async def chat(self, deployment: Deployment, ctx: RequestContext) -> Reply:
        self.called.append(deployment.id)
        outcome = outcome_of(self.case, deployment.id)
        if outcome == "timeout":
            raise UpstreamTimeout("slow")
        if outcome != "ok":
            raise UpstreamRejected("failed", status=int(outcome))
        return JsonReply(200, orjson.dumps(ANSWER), ANSWER)

    embeddings = chat


class FixedDowngrade:
    def __init__(self, target: ModelAlias | None) -> None:
        self._target = target

    async def target(self, ctx: RequestContext, alias: ModelAlias) -> ModelAlias | None:
        return self._target if alias.name == "a0" else None


def request(case: Case, catalog: Catalog) -> RequestContext:
    body = {"model": "a0", "messages": [{"role": "user", "content": "hi"}]}
    ctx = RequestContext(
        request_id=f"r-{case.user}",
        endpoint=Endpoint.CHAT,
        raw_body=orjson.dumps(body),
        authorization=None,
        catalog=catalog,
    )
    ctx.principal = Principal("key_1", "t", frozenset())
    ctx.user = case.user
    names = CLASS_NAMES[: case.classes]
    if case.header_unknown:
        ctx.data_class_header = "top-secret"
    elif case.header is not None:
        ctx.data_class_header = names[case.header]
    if case.prompt_class is not None:
        ctx.prompt_data_class = names[case.prompt_class]
        ctx.prompt_name = "p"
    return ctx


async def run_case(case: Case) -> None:
    catalog = catalog_for(case)
    recorder = Recorder(case)
    book = RolloutBook({"ro": RolloutState("ro", "running", step=0, revision=1)})  # type: ignore[arg-type]
    downgrade = catalog.aliases[f"a{case.downgrade_to}"] if case.downgrade_to is not None else None
    # Every shadow rule draws (sample rate 1): each copy the plan holds is sent.
    route = Route(ShadowStrategy(RolloutStrategy(book), draw=lambda: 0.0), downgrades=FixedDowngrade(downgrade))
    pipeline = build_pipeline([ParseRequest(), Resolve(), route], CallUpstream(recorder))  # type: ignore[arg-type]
    core = Core(pipeline)
    rank = expected_rank(case)
    ctx = request(case, catalog)
    await core.run(ctx)
    outcome = ctx.error
    if case.header_unknown and case.classes:
        assert outcome is not None and outcome.code == "unknown_data_class"
    for called in recorder.called:
        assert may_receive(case, called, rank), (called, rank)
    if isinstance(outcome, DataClassForbidden):
        # Only once every permitted deployment it tried had failed.
        assert all(outcome_of(case, called) != "ok" for called in recorder.called)
        assert rank is not None and outcome.data_class == CLASS_NAMES[rank]
    if case.shadows and outcome is None:
        runner = ShadowRunner(lambda: core, ShadowSettings(), SHADOW_METRICS, None, permits=data_class_permits)
        recorder.called.clear()
        runner.record(ctx)
        await runner.idle()
        for called in recorder.called:
            assert may_receive(case, called, rank), ("shadow", called, rank)
    if case.fork and outcome is None:
        # A copy of the request (as a shadow is made) keeps at least the primary's class, and
        # passes the same boundary.
        copy = ctx.fork(Origin.SHADOW)
        recorder.called.clear()
        with contextlib.suppress(UpstreamError, DataClassForbidden):
            await pipeline(copy)
        for called in recorder.called:
            assert may_receive(case, called, rank), ("fork", called, rank)


async def instant(delay: float) -> None:
    return None


QUIET = logging.getLogger("gateway.upstream")
#: One event loop for every case: a new one per case (``asyncio.run``) was most of the test's
#: time (creating and closing a loop costs more than routing a request).
RUNNER = asyncio.Runner()
atexit.register(RUNNER.close)
SHADOW_METRICS = ShadowMetrics(CollectorRegistry())


@settings(max_examples=5000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cases())
def test_no_request_reaches_a_deployment_its_class_forbids(case: Case) -> None:
    # Failed attempts log a warning each; formatting thousands of them is not what is tested.
    with mock.patch.object(upstream_stage.asyncio, "sleep", instant), mock.patch.object(QUIET, "disabled", True):
        RUNNER.run(run_case(case))
