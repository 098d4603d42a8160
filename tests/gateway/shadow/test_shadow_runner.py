"""The shadow runner without a server: what it sends, skips, drops, times out and stores."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import orjson
import pytest
from prometheus_client import CollectorRegistry

from gateway.answer import Answer
from gateway.auth import Principal
from gateway.catalog import Catalog, Deployment, build_catalog
from gateway.config.policies import ModelsFile, PolicyBundle, TeamsFile
from gateway.config.settings import ShadowSettings
from gateway.config.shadows import ShadowsFile
from gateway.context import Endpoint, RequestContext
from gateway.errors import PermissionDenied, RateLimited
from gateway.routing import RoutingPlan, ShadowCopy
from gateway.shadow.runner import OUTCOMES, ShadowMetrics, ShadowRunner

MODELS = {
    "aliases": {
        "chat": {"deployments": [{"provider": "mock", "model": "a"}]},
        "big": {"deployments": [{"provider": "mock", "model": "big-1"}, {"provider": "mock", "model": "big-2"}]},
    }
}
ANSWER = {"choices": [{"index": 0, "message": {"role": "assistant", "content": "the answer"}}]}


def catalog() -> Catalog:
    return build_catalog(
        PolicyBundle(
            models=ModelsFile.model_validate(MODELS),
            teams=TeamsFile.model_validate({"teams": {"t": {}}}),
            shadows=ShadowsFile.model_validate(
                {
                    "shadows": {
                        "to-big": {"target": "big", "sample_rate": 1.0, "traffic": {"alias": "chat"}},
                        "to-prompt": {"target": "prompt:p@v2", "sample_rate": 1.0, "traffic": {"alias": "chat"}},
                    }
                }
            ),
        )
    )


def primary(cat: Catalog, *rules: str, status: int = 200) -> RequestContext:
    body = {"model": "chat", "messages": [{"role": "user", "content": "hi"}]}
    ctx = RequestContext(
        request_id="req-1",
        endpoint=Endpoint.CHAT,
        raw_body=orjson.dumps(body),
        authorization=b"Bearer secret",
        catalog=cat,
        alias=cat.aliases["chat"],
        body=body,
    )
    ctx.principal = Principal("key_1", "t", frozenset())
    targets = {"to-big": "big", "to-prompt": "prompt:p@v2"}
    ctx.plan = RoutingPlan(
        cat.aliases["chat"].deployments, shadows=tuple(ShadowCopy(targets[rule], rule) for rule in rules)
    )
    ctx.status = status
    ctx.answer = Answer.of_json(status, orjson.dumps(ANSWER), ANSWER)
    ctx.elapsed_seconds = 0.01
    return ctx


class FakeCore:
    """Answers each copy as ``behave`` says, after ``gate`` opens (if given)."""

    def __init__(self, behave: str = "answer", gate: asyncio.Event | None = None) -> None:
        self.behave = behave
        self.gate = gate
        self.seen: list[RequestContext] = []

    async def run(self, ctx: RequestContext) -> None:
        self.seen.append(ctx)
        try:
            if self.gate is not None:
                await self.gate.wait()
            ctx.alias = ctx.catalog.aliases["big"]
            if self.behave == "answer":
                ctx.answer = Answer.of_json(200, orjson.dumps(ANSWER), ANSWER)
                ctx.cost = 0.002
            else:
                error = {
                    "budget": RateLimited("no room", code="budget_exceeded"),
                    "forbidden": PermissionDenied("no", code="data_class_forbidden"),
                    "error": PermissionDenied("no", code="model_not_allowed"),
                }[self.behave]
                ctx.status, ctx.error = error.status, error
        except asyncio.CancelledError:
            ctx.status = 499
            raise
        finally:
            ctx.finish()


class Rows:
    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []

    def submit(self, row: dict[str, Any]) -> bool:
        self.rows.append(row)
        return True


def runner(core: FakeCore, rows: Rows, permits: Any = None, **settings: Any) -> tuple[ShadowRunner, ShadowMetrics]:
    metrics = ShadowMetrics(CollectorRegistry())
    extra = {"permits": permits} if permits is not None else {}
    made = ShadowRunner(lambda: core, ShadowSettings(**settings), metrics, rows, **extra)  # type: ignore[arg-type, return-value]
    return made, metrics


def count(metrics: ShadowMetrics, rule: str, outcome: str) -> float:
    return metrics.copies.labels(rule, outcome)._value.get()  # type: ignore[attr-defined, no-any-return]


async def settle(shadows: ShadowRunner) -> None:
    await shadows.idle()


async def test_a_completed_copy_is_the_callers_request_retargeted_and_compared() -> None:
    core, rows = FakeCore(), Rows()
    shadows, metrics = runner(core, rows)
    shadows.record(primary(catalog(), "to-big"))
    await settle(shadows)
    [copy] = core.seen
    assert copy.is_shadow and copy.parent_id == "req-1" and copy.request_id == "req-1-shadow-0"
    assert copy.authorization is None and copy.principal is not None and copy.principal.team == "t"
    assert orjson.loads(copy.raw_body)["model"] == "big"
    assert count(metrics, "to-big", "completed") == 1
    [row] = rows.rows
    assert row["outcome"] == "completed" and row["exact_match"] is True and row["similarity"] == 1.0
    assert (row["request_id"], row["shadow_request_id"]) == ("req-1", "req-1-shadow-0")
    assert row["shadow_cost_nanos"] == 2_000_000 and row["shadow_alias"] == "big"


@pytest.mark.parametrize(
    ("behave", "outcome", "stored"),
    [
        ("budget", "budget", False),
        ("forbidden", "forbidden", False),
        ("error", "error", True),
    ],
)
async def test_a_refused_copy_is_counted_by_why(behave: str, outcome: str, stored: bool) -> None:
    rows = Rows()
    shadows, metrics = runner(FakeCore(behave), rows)
    shadows.record(primary(catalog(), "to-big"))
    await settle(shadows)
    assert count(metrics, "to-big", outcome) == 1
    assert [row["outcome"] for row in rows.rows] == ([outcome] if stored else [])


async def test_permits_refusing_every_deployment_keeps_the_copy_from_being_sent() -> None:
    asked: list[str] = []

    def permits(ctx: RequestContext, deployment: Deployment) -> bool:
        asked.append(deployment.model)
        return False

    core = FakeCore()
    shadows, metrics = runner(core, Rows(), permits=permits)
    shadows.record(primary(catalog(), "to-big", "to-prompt"))
    await settle(shadows)
    assert asked == ["big-1", "big-2"]  # every deployment of the alias target, with the primary's context
    assert count(metrics, "to-big", "forbidden") == 1
    # A prompt target's alias is known only once rendered: the pipeline's own check decides.
    assert [ctx.request_id for ctx in core.seen] == ["req-1-shadow-1"]


async def test_copies_beyond_the_bound_are_dropped_and_a_failed_primary_is_not_copied() -> None:
    gate = asyncio.Event()
    core = FakeCore(gate=gate)
    shadows, metrics = runner(core, Rows(), max_concurrent=1)
    cat = catalog()
    shadows.record(primary(cat, "to-big", "to-prompt"))
    shadows.record(primary(cat, "to-big", status=502))
    await asyncio.sleep(0)
    assert shadows.running == 1
    assert count(metrics, "to-prompt", "dropped_full") == 1
    assert count(metrics, "to-big", "primary_failed") == 1
    gate.set()
    await settle(shadows)
    assert count(metrics, "to-big", "completed") == 1


async def test_a_copy_past_its_timeout_is_cancelled_and_stored_as_such() -> None:
    rows = Rows()
    shadows, metrics = runner(FakeCore(gate=asyncio.Event()), rows, timeout_s=0.01)
    shadows.record(primary(catalog(), "to-big"))
    await settle(shadows)
    assert count(metrics, "to-big", "timeout") == 1
    [row] = rows.rows
    assert (row["outcome"], row["shadow_status"], row["similarity"]) == ("timeout", 499, None)


async def test_close_cancels_running_copies_and_refuses_new_ones() -> None:
    core = FakeCore(gate=asyncio.Event())
    shadows, metrics = runner(core, Rows())
    cat = catalog()
    shadows.record(primary(cat, "to-big"))
    await asyncio.sleep(0)
    await shadows.close()
    assert shadows.running == 0 and core.seen[0].status == 499
    shadows.record(primary(cat, "to-big"))
    assert count(metrics, "to-big", "shutdown") == 2


async def test_disabled_shadows_send_nothing() -> None:
    core = FakeCore()
    shadows, metrics = runner(core, Rows(), enabled=False)
    shadows.record(primary(catalog(), "to-big"))
    assert shadows.running == 0 and core.seen == []
    assert count(metrics, "to-big", "disabled") == 1


def test_every_outcome_is_documented() -> None:
    docs = Path(__file__).resolve().parents[3] / "docs"
    shadow, operations = (docs / "shadow.md").read_text(), (docs / "operations.md").read_text()
    assert [name for name in OUTCOMES if f"| `{name}` |" not in shadow] == []
    assert [name for name in OUTCOMES if f"`{name}`" not in operations] == []
