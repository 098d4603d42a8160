"""The core handler and forked requests: one lifecycle for /v1, evaluations and shadow copies."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest

from gateway.auth import Authenticate, Principal
from gateway.context import Endpoint, JsonReply, Origin, Reply, RequestContext, StreamReply
from gateway.core import CLIENT_CLOSED, Core, error_reply
from gateway.errors import AuthenticationFailed, RateLimited, UpstreamUnavailable
from gateway.pipeline import build_pipeline
from support.budgets import catalog_of, priced_models

CATALOG = catalog_of(priced_models(), {"teams": {"t": {}}})
PRINCIPAL = Principal("key_1", "t", frozenset({"app"}))
BODY = {"model": "priced", "messages": [{"role": "user", "content": "hi"}]}


def caller(**changes: Any) -> RequestContext:
    ctx = RequestContext(request_id="req-1", endpoint=Endpoint.CHAT, raw_body=orjson.dumps(BODY),
                         authorization=None, catalog=CATALOG)
    for name, value in changes.items():
        setattr(ctx, name, value)
    return ctx


def answering(reply: Reply) -> Any:
    async def handler(ctx: RequestContext) -> Reply:
        return reply

    return handler


def failing(error: BaseException) -> Any:
    async def handler(ctx: RequestContext) -> Reply:
        raise error

    return handler


async def test_an_answer_sets_the_status_and_is_returned_as_is() -> None:
    reply = JsonReply(201, b"{}", {})
    ctx = caller()
    assert await Core(answering(reply)).handle(ctx) is reply
    assert (ctx.status, ctx.error, ctx.finished) == (201, None, False)  # the deliverer finishes


async def test_a_gateway_error_becomes_an_openai_error_reply_with_its_headers() -> None:
    error = RateLimited("over budget", code="budget_exceeded", headers={"retry-after": "7"})
    ctx = caller()
    reply = await Core(failing(error)).handle(ctx)
    assert isinstance(reply, JsonReply)
    assert reply.status == 429 and (b"retry-after", b"7") in reply.headers
    body = orjson.loads(reply.body)
    assert body["error"]["code"] == "budget_exceeded" and body["error"]["message"] == "over budget"
    assert ctx.status == 429 and ctx.error is error
    assert reply.body == error_reply(error).body


async def test_an_unexpected_exception_is_a_500_that_tells_nothing(caplog: pytest.LogCaptureFixture) -> None:
    ctx = caller()
    reply = await Core(failing(KeyError("secret-internal-detail"))).handle(ctx)
    assert isinstance(reply, JsonReply) and reply.status == 500
    assert b"secret-internal-detail" not in reply.body
    assert orjson.loads(reply.body)["error"]["type"] == "server_error"
    assert ctx.status == 500 and ctx.error is not None and ctx.error.code == "internal_error"
    assert "unhandled error" in caplog.text


async def failing_midway() -> AsyncIterator[bytes]:
    """A stream whose upstream goes away after its first event."""
    yield b'data: {"choices":[]}\n\n'
    raise UpstreamUnavailable("the upstream went away")


async def test_a_stream_that_fails_midway_ends_with_an_error_event() -> None:
    ctx = caller(stream=True)
    reply = await Core(answering(StreamReply(failing_midway()))).handle(ctx)
    assert isinstance(reply, StreamReply) and ctx.status == 200
    received = [chunk async for chunk in reply.events]
    assert received[0] == b'data: {"choices":[]}\n\n'
    assert orjson.loads(received[1][6:])["error"]["message"] == "the upstream went away"
    assert ctx.status == 503 and ctx.error is not None


def _contexts_left_for_the_collector(make: Any) -> list[RequestContext]:
    """The RequestContexts that ``make()`` leaves behind in reference cycles: with the collector
    off, everything else is freed by reference counting as soon as it is dropped."""
    gc.collect()
    gc.disable()
    try:
        asyncio.run(make())
        gc.set_debug(gc.DEBUG_SAVEALL)
        gc.collect()
        return [found for found in gc.garbage if isinstance(found, RequestContext)]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()


def test_a_failed_request_leaves_no_reference_cycle_behind() -> None:
    """The error kept on ``ctx`` does not keep its traceback: that held the frames holding
    ``ctx``, a cycle per failed request, and a flood of refused keys cost full collections."""

    async def refused() -> None:
        ctx = caller()
        try:
            raise UpstreamUnavailable("down")
        except UpstreamUnavailable as cause:
            error = AuthenticationFailed("bad key")
            error.__cause__ = cause  # raised from another error, as the providers do
        await Core(failing(error)).handle(ctx)
        assert ctx.error is error and ctx.status == 401
        assert (error.__traceback__, error.__cause__, error.__context__) == (None, None, None)

    async def failed_stream() -> None:
        ctx = caller(stream=True)
        reply = await Core(answering(StreamReply(failing_midway()))).handle(ctx)
        assert isinstance(reply, StreamReply)
        assert len([chunk async for chunk in reply.events]) == 2 and ctx.status == 503

    async def unexpected() -> None:
        ctx = caller()
        await Core(failing(KeyError("detail"))).handle(ctx)
        assert ctx.status == 500

    for make in (refused, failed_stream, unexpected):
        assert _contexts_left_for_the_collector(make) == [], make.__name__


async def test_run_reads_a_stream_to_its_end_and_finishes_once() -> None:
    closed: list[bool] = []

    async def events() -> AsyncIterator[bytes]:
        try:
            yield b"data: {}\n\n"
            yield b"data: [DONE]\n\n"
        finally:
            closed.append(True)

    finished: list[int] = []
    ctx = caller(origin=Origin.EVAL, principal=PRINCIPAL)
    ctx.on_finish(lambda c: finished.append(c.status))
    await Core(answering(StreamReply(events()))).run(ctx)
    assert closed == [True] and finished == [200] and ctx.finished


async def test_run_records_a_cancelled_internal_request_as_cancelled() -> None:
    started = asyncio.Event()

    async def slow(ctx: RequestContext) -> Reply:
        started.set()
        await asyncio.sleep(30)
        raise AssertionError("not reached")

    finished: list[int] = []
    ctx = caller(origin=Origin.SHADOW, principal=PRINCIPAL)
    ctx.on_finish(lambda c: finished.append(c.status))
    task = asyncio.ensure_future(Core(slow).run(ctx))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert finished == [CLIENT_CLOSED]


# -- forks and who is authenticated -------------------------------------------------------------


class Keys:
    """A key store that knows one key."""

    async def authenticate(self, token: str) -> Principal | None:
        return PRINCIPAL if token == "good" else None


async def passed(ctx: RequestContext) -> Reply:
    return JsonReply(200, b"{}", {})


async def test_a_callers_key_is_checked_even_if_a_principal_is_preset() -> None:
    pipeline = build_pipeline([Authenticate(Keys())], passed)  # type: ignore[arg-type]
    smuggled = caller(principal=PRINCIPAL)  # origin caller: the preset principal counts for nothing
    with pytest.raises(AuthenticationFailed):
        await pipeline(smuggled)
    good = caller(authorization=b"Bearer good")
    assert (await pipeline(good)).status == 200 and good.principal == PRINCIPAL


async def test_internal_requests_skip_the_key_check_but_need_a_principal() -> None:
    pipeline = build_pipeline([Authenticate(Keys())], passed)  # type: ignore[arg-type]
    assert (await pipeline(caller(origin=Origin.EVAL, principal=PRINCIPAL))).status == 200
    with pytest.raises(AuthenticationFailed):
        await pipeline(caller(origin=Origin.SHADOW))


def test_a_fork_is_a_fresh_internal_request_for_the_same_principal() -> None:
    parent = caller(authorization=b"Bearer good", principal=PRINCIPAL, user="u-1")
    parent.status, parent.cost, parent.cache_status = 200, 0.5, "HIT"
    shadow = parent.fork(Origin.SHADOW, body={**BODY, "model": "other"})
    assert shadow.origin is Origin.SHADOW and shadow.is_shadow and not parent.is_shadow
    assert shadow.parent_id == "req-1" and shadow.request_id == "req-1-shadow"
    assert shadow.principal == PRINCIPAL and shadow.catalog is CATALOG and shadow.user == "u-1"
    assert shadow.authorization is None  # never the caller's key
    assert orjson.loads(shadow.raw_body)["model"] == "other"
    assert (shadow.cost, shadow.cache_status, shadow.status, shadow.finishers) == (0.0, None, 200, [])
    same = parent.fork(Origin.EVAL, request_id="eval-1")
    assert same.raw_body == parent.raw_body and same.request_id == "eval-1"
    with pytest.raises(ValueError):
        parent.fork(Origin.CALLER)


def test_internal_requests_are_made_only_for_internal_origins() -> None:
    ctx = RequestContext.internal(Origin.EVAL, PRINCIPAL, CATALOG, BODY, request_id="eval-2")
    assert ctx.origin is Origin.EVAL and ctx.principal == PRINCIPAL and orjson.loads(ctx.raw_body) == BODY
    with pytest.raises(ValueError):
        RequestContext.internal(Origin.CALLER, PRINCIPAL, CATALOG, BODY, request_id="x")
