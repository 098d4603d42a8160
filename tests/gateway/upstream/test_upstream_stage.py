"""The upstream stage: retries on the same deployment, then fallbacks, and the answer tap."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest

from gateway.catalog import Deployment
from gateway.context import Endpoint, JsonReply, Reply, RequestContext, StreamReply, Usage
from gateway.errors import UpstreamError, UpstreamRejected, UpstreamTimeout, UpstreamUnavailable
from gateway.upstream import CallUpstream
from gateway.upstream import stage as upstream_stage
from support.budgets import catalog_of

FAKE = {"provider": "openai", "base_url": "http://127.0.0.1:9/v1", "free": True}
CATALOG = catalog_of(
    {"aliases": {"pair": {"deployments": [
        {**FAKE, "model": "first", "api_key": "k", "retries": 1},
        {**FAKE, "model": "second", "api_key": "", "retries": 0},
    ]}}},
    {"teams": {"t": {}}},
)
ANSWER = {"choices": [{"index": 0, "message": {"role": "assistant", "content": "Paris."}, "finish_reason": "stop"}]}


class Script:
    """A provider registry whose one provider answers from a script, one outcome per attempt."""

    def __init__(self, *outcomes: Reply | UpstreamError) -> None:
        self.outcomes = list(outcomes)
        self.calls: list[str] = []

    def for_deployment(self, deployment: Deployment) -> Script:
        return self

    async def chat(self, deployment: Deployment, ctx: RequestContext) -> Reply:
        self.calls.append(deployment.model)
        outcome = self.outcomes.pop(0)
        if isinstance(outcome, UpstreamError):
            raise outcome
        return outcome

    embeddings = chat


@pytest.fixture(autouse=True)
def no_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    async def instant(delay: float) -> None:
        return None

    monkeypatch.setattr(upstream_stage.asyncio, "sleep", instant)


def context() -> RequestContext:
    ctx = RequestContext(request_id="r", endpoint=Endpoint.CHAT, raw_body=b"{}", authorization=None,
                         catalog=CATALOG)
    ctx.alias = CATALOG.aliases["pair"]
    ctx.deployments = ctx.alias.deployments
    return ctx


def json_reply() -> JsonReply:
    return JsonReply(200, orjson.dumps(ANSWER), ANSWER)


async def test_retries_then_falls_back_and_reports_every_attempt() -> None:
    script = Script(UpstreamTimeout("slow"), UpstreamRejected("busy", status=503), json_reply())
    attempts: list[tuple[str, str]] = []
    stage = CallUpstream(script, on_attempt=lambda d, s, outcome: attempts.append((d.model, outcome)))  # type: ignore[arg-type]
    ctx = context()
    reply = await stage(ctx)
    assert reply.status == 200
    assert script.calls == ["first", "first", "second"]
    assert [outcome for _, outcome in attempts][-1] == "ok" and len(attempts) == 3
    assert ctx.attempts == 3 and ctx.deployment is not None and ctx.deployment.model == "second"
    assert ctx.answer is not None and ctx.answer.text == "Paris." and ctx.answer.complete
    assert ctx.answer.usage is None and ctx.answer.tool_calls == []  # none on the wire


async def test_a_callers_mistake_is_not_retried() -> None:
    script = Script(UpstreamRejected("bad request", status=400), json_reply())
    with pytest.raises(UpstreamRejected) as caught:
        await CallUpstream(script)(context())  # type: ignore[arg-type]
    assert caught.value.status == 400 and script.calls == ["first"]


async def test_when_every_attempt_fails_the_last_error_is_raised_with_the_empty_key_named() -> None:
    script = Script(UpstreamUnavailable("down"), UpstreamUnavailable("down"), UpstreamRejected("no key", status=401))
    with pytest.raises(UpstreamRejected) as caught:
        await CallUpstream(script)(context())  # type: ignore[arg-type]
    assert script.calls == ["first", "first", "second"]
    assert "the API key of" in caught.value.message  # "second" has an empty key: say so


async def test_no_deployment_is_a_503() -> None:
    ctx = context()
    ctx.deployments = ()
    with pytest.raises(UpstreamUnavailable):
        await CallUpstream(Script())(ctx)  # type: ignore[arg-type]


async def test_a_streamed_answer_is_tapped_as_it_passes() -> None:
    async def events() -> AsyncIterator[bytes]:
        yield b'data: {"choices":[{"index":0,"delta":{"content":"Par"}}]}\n\n'
        yield (b'data: {"choices":[{"index":0,"delta":{"content":"is."},"finish_reason":"stop"}]}\n\n'
               b'data: {"choices":[],"usage":{"prompt_tokens":7,"completion_tokens":2}}\n\n'
               b"data: [DONE]\n\n")

    ctx = context()
    reply: Any = await CallUpstream(Script(StreamReply(events())))(ctx)  # type: ignore[arg-type]
    assert isinstance(reply, StreamReply) and ctx.answer is not None and ctx.answer.empty
    relayed = [chunk async for chunk in reply.events]
    assert len(relayed) == 2 and ctx.answer.complete
    assert ctx.answer.text == "Paris." and ctx.answer.finish_reasons == ["stop"]
    assert ctx.answer.usage == Usage(7, 2)
