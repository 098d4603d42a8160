"""Answers the gateway must count itself while their tokenizer is not built yet.

A stream that ends without usage (cut short by the caller, or an upstream that died mid-answer)
is counted in a finisher, which cannot wait for a tokenizer build. The count is deferred, and
the record stage writes the ledger row, the metrics and the budget's settlement only once it is
done: never a zero, never a blocked event loop, never a settlement twice.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from gateway.answer import tap_reply
from gateway.auth import Principal
from gateway.budgets.alerts import Alerts, BudgetMetrics
from gateway.budgets.backend import Reservation
from gateway.budgets.memory_backend import MemoryBackend
from gateway.budgets.policy import BudgetBook
from gateway.budgets.stage import Budget
from gateway.catalog import Catalog
from gateway.context import Endpoint, JsonReply, Reply, RequestContext, StreamReply
from gateway.errors import UpstreamError, UpstreamUnavailable
from gateway.ledger import LedgerSink
from gateway.observe import Metrics, Record
from gateway.pipeline import build_pipeline
from gateway.pipeline_types import Handler
from gateway.pricing import to_nanos
from gateway.storage import Database, open_database
from gateway.usage import MeterUsage
from gateway.usage.tokens import TiktokenTokenizer, TokenCounter
from support.budgets import WORST, catalog_of, priced_models

HI = [{"role": "user", "content": "Hi there"}]
SENT = ["Hello to you,", " my friend"]  # what the upstream streamed before it died


@pytest.fixture(scope="module")
def o200k() -> TiktokenTokenizer:
    """The reference count, built before any test holds a build back."""
    return TiktokenTokenizer(TokenCounter().encoding("o200k_base"))


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Database]:
    database = await open_database(f"sqlite:///{tmp_path / 'ledger.db'}")
    yield database
    await database.close()


def catalog() -> Catalog:
    return catalog_of(priced_models(), {"teams": {
        "t": {"budget": {"limit_usd": 1.0, "period": "daily"}},
        "free-for-all": {},
    }})


class Rows:
    """The ledger writer's queue, in memory."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []

    def submit(self, row: dict[str, Any]) -> bool:
        self.rows.append(row)
        return True


def gated(tokens: TokenCounter, monkeypatch: pytest.MonkeyPatch) -> threading.Event:
    """Hold every build of ``tokens`` (the compact encoding's, and tiktoken's) until the returned
    gate opens."""
    gate = threading.Event()
    for attribute in ("_load", "_load_compact"):
        load = getattr(tokens, attribute)

        def slow_load(name: str, load: Any = load) -> Any:
            gate.wait(10)
            return load(name)

        monkeypatch.setattr(tokens, attribute, slow_load)
    return gate


async def crashing(ctx: RequestContext) -> Reply:
    """An upstream whose stream dies after two pieces, before any usage."""
    ctx.deployment = ctx.deployments[0]

    async def events() -> AsyncIterator[bytes]:
        for piece in SENT:
            yield b"data: " + orjson.dumps({"choices": [{"index": 0, "delta": {"content": piece}}]}) + b"\n\n"
        raise UpstreamUnavailable("the upstream went away")

    return StreamReply(events())


async def usageless(ctx: RequestContext) -> Reply:
    ctx.deployment = ctx.deployments[0]
    body = {"choices": [{"index": 0, "message": {"role": "assistant", "content": "".join(SENT)}}]}
    return JsonReply(200, orjson.dumps(body), body)


def tapped(terminal: Handler) -> Handler:
    """``terminal``'s replies with the answer tap on, as the upstream stage returns them."""

    async def call(ctx: RequestContext) -> Reply:
        reply = await terminal(ctx)
        tap_reply(ctx, reply)
        return reply

    return call


def pipeline(tokens: TokenCounter, backend: Any, terminal: Handler, *, max_waiting: int = 1024
             ) -> tuple[Handler, Record, Rows, Metrics]:
    rows = Rows()
    metrics = Metrics()
    record = Record(metrics, [LedgerSink(rows)], max_waiting=max_waiting)
    budget = Budget(backend, MeterUsage(tokens), BudgetBook(), BudgetMetrics(None), default_max_output_tokens=4096)
    return build_pipeline([record, MeterUsage(tokens), budget], tapped(terminal)), record, rows, metrics


def context(catalog: Catalog, team: str, *, stream: bool = True, messages: list[dict[str, Any]] = HI
            ) -> RequestContext:
    body: dict[str, Any] = {"messages": messages, "max_tokens": 100, "stream": stream}
    ctx = RequestContext(request_id=f"req-{team}", endpoint=Endpoint.CHAT, raw_body=orjson.dumps(body),
                         authorization=None, catalog=catalog)
    ctx.principal = Principal("key_1", team, frozenset({"app"}))
    ctx.body = body
    ctx.alias = catalog.aliases["priced"]
    ctx.deployments = ctx.alias.deployments
    ctx.stream = stream
    return ctx


async def relay(ctx: RequestContext, reply: Reply) -> None:
    """What the server does with a stream: relay it, report a failure in-band, then finish."""
    assert isinstance(reply, StreamReply)
    try:
        async for _ in reply.events:
            pass
    except UpstreamError as error:
        ctx.status, ctx.error = error.status, error
    ctx.finish()


def expected(o200k: TiktokenTokenizer) -> tuple[int, int, int]:
    prompt, completion = o200k.count_messages(HI), o200k.count_text("".join(SENT))
    return prompt, completion, to_nanos(completion * 1e-4)  # priced: input free, output $1e-4


async def test_a_crashed_stream_is_recorded_once_counted(
    o200k: TiktokenTokenizer, monkeypatch: pytest.MonkeyPatch
) -> None:
    tokens = TokenCounter()
    gate = gated(tokens, monkeypatch)
    handler, record, rows, metrics = pipeline(tokens, None, crashing)
    ctx = context(catalog(), "free-for-all")  # no budget: nothing built it before the call
    await relay(ctx, await handler(ctx))
    # The finisher returned at once (the loop is free) and the row waits for the count.
    assert tokens.building == {"o200k_base"} and record.waiting == 1
    assert rows.rows == [] and ctx.usage is None
    await asyncio.sleep(0.5)  # the build takes a while: that is not the request's latency
    gate.set()
    await record.drain()
    prompt, completion, cost = expected(o200k)
    assert len(rows.rows) == 1
    row = rows.rows[0]
    assert (row["kind"], row["status"], row["error_code"]) == ("error", 503, "upstream_unavailable")
    assert row["latency_ms"] < 400
    assert (row["prompt_tokens"], row["completion_tokens"], row["cost_nanos"]) == (prompt, completion, cost)
    sample = metrics.registry.get_sample_value
    labels = {"team": "free-for-all", "model": "priced"}
    assert sample("gateway_tokens_total", {**labels, "direction": "output"}) == completion
    assert sample("gateway_cost_usd_total", labels) == pytest.approx(completion * 1e-4)
    assert sample("gateway_requests_total", {**labels, "status": "503"}) == 1


async def test_a_budgeted_stream_settles_once_with_the_counted_cost(
    o200k: TiktokenTokenizer, db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = MemoryBackend(db, Alerts(BudgetMetrics(None), webhook_timeout_s=1))
    settled: list[int] = []
    settle = backend.settle

    def counted_settle(reservation: Reservation, cost_nanos: int) -> None:
        settled.append(cost_nanos)
        settle(reservation, cost_nanos)

    monkeypatch.setattr(backend, "settle", counted_settle)
    tokens = TokenCounter()
    handler, record, rows, _ = pipeline(tokens, backend, crashing)
    cat = catalog()
    budget = BudgetBook().for_team(cat, "t")
    assert budget is not None
    ctx = context(cat, "t")
    reply = await handler(ctx)  # reserved: the prompt was counted with a tokenizer built for it
    state = await backend.snapshot(budget, budget.window())
    assert state is not None and state["t"].reserved == WORST
    # The stage builds a budgeted request's tokenizers before reserving, so its finisher finds
    # them; pretend it does not, to check a deferred count still settles, once, at the right cost.
    monkeypatch.setattr(tokens, "built", lambda deployment: None)
    await relay(ctx, reply)
    assert record.waiting == 1 and settled == [] and rows.rows == []
    await record.drain()
    _, _, cost = expected(o200k)
    assert settled == [cost]
    assert rows.rows[0]["cost_nanos"] == cost
    state = await backend.snapshot(budget, budget.window())
    assert state is not None and (state["t"].spent, state["t"].reserved) == (cost, 0)


async def test_past_the_cap_the_count_is_done_at_once(o200k: TiktokenTokenizer) -> None:
    tokens = TokenCounter()
    handler, record, rows, _ = pipeline(tokens, None, crashing, max_waiting=0)
    ctx = context(catalog(), "free-for-all")
    await relay(ctx, await handler(ctx))
    assert record.waiting == 0 and len(rows.rows) == 1  # counted synchronously, recorded at once
    prompt, completion, cost = expected(o200k)
    assert (rows.rows[0]["prompt_tokens"], rows.rows[0]["completion_tokens"], rows.rows[0]["cost_nanos"]) == (
        prompt, completion, cost
    )
    assert rows.rows[0]["cost_nanos"] == cost


async def test_without_a_record_stage_the_finisher_counts_at_once(o200k: TiktokenTokenizer) -> None:
    tokens = TokenCounter()
    ctx = context(catalog(), "free-for-all")
    await relay(ctx, await MeterUsage(tokens)(ctx, tapped(crashing)))
    prompt, completion, _ = expected(o200k)
    assert ctx.usage is not None and (ctx.usage.prompt_tokens, ctx.usage.completion_tokens) == (prompt, completion)
    assert not ctx.deferred


async def test_a_json_answer_whose_caller_left_during_the_build_is_still_counted(
    o200k: TiktokenTokenizer, monkeypatch: pytest.MonkeyPatch
) -> None:
    tokens = TokenCounter()
    gate = gated(tokens, monkeypatch)
    handler, record, rows, _ = pipeline(tokens, None, usageless)
    ctx = context(catalog(), "free-for-all", stream=False)
    call = asyncio.ensure_future(handler(ctx))
    for _ in range(100):
        if tokens.building:
            break
        await asyncio.sleep(0.01)
    assert tokens.building == {"o200k_base"}  # the answer is in, its count waits for the build
    call.cancel()  # the caller hung up
    with pytest.raises(asyncio.CancelledError):
        await call
    ctx.status = 499
    ctx.finish()
    assert record.waiting == 1 and rows.rows == []
    gate.set()
    await record.drain()
    prompt, completion, cost = expected(o200k)
    row = rows.rows[0]
    assert (row["kind"], row["prompt_tokens"], row["completion_tokens"], row["cost_nanos"]) == (
        "cancelled", prompt, completion, cost
    )


#: A prompt over the large-text threshold (8 KiB): too much to count on the event loop.
LARGE = [{"role": "user", "content": "count me on a thread please " * 1500}]


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "json"])
async def test_a_large_prompt_without_usage_is_counted_by_tiktoken_off_the_loop(
    o200k: TiktokenTokenizer, stream: bool
) -> None:
    """The compact counter holds the GIL while it counts (~5 ms for 8 KiB of prose): a large prompt is
    counted on a worker thread by tiktoken's encoder, built for it. Same count either way."""
    tokens = TokenCounter()
    handler, record, rows, _ = pipeline(tokens, None, crashing if stream else usageless)
    ctx = context(catalog(), "free-for-all", stream=stream, messages=LARGE)
    reply = await handler(ctx)
    if stream:
        await relay(ctx, reply)
        assert record.waiting == 1  # deferred even though nothing else was missing
    else:
        ctx.finish()
    await record.drain()
    assert tokens.encodings == {"o200k_base"}
    row = rows.rows[0]
    assert (row["prompt_tokens"], row["completion_tokens"]) == (
        o200k.count_messages(LARGE), o200k.count_text("".join(SENT))
    )


async def test_a_large_rendered_prompt_sent_as_a_small_body_is_counted_off_the_loop(o200k: TiktokenTokenizer) -> None:
    """A prompt from the repository renders a template: what is counted is the rendered body,
    however small the body sent (``model: prompt:NAME`` and a few variables)."""
    tokens = TokenCounter()
    handler, record, rows, _ = pipeline(tokens, None, crashing)
    ctx = context(catalog(), "free-for-all", messages=LARGE)
    ctx.raw_body = b'{"model": "prompt:big", "variables": {}, "stream": true}'
    ctx.prompt_name = "big"
    await relay(ctx, await handler(ctx))
    assert record.waiting == 1
    await record.drain()
    assert tokens.encodings == {"o200k_base"}
    row = rows.rows[0]
    assert (row["prompt_tokens"], row["completion_tokens"]) == (
        o200k.count_messages(LARGE), o200k.count_text("".join(SENT))
    )


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "json"])
async def test_a_small_answer_without_usage_builds_only_the_compact_encoding(
    o200k: TiktokenTokenizer, stream: bool
) -> None:
    tokens = TokenCounter()
    handler, record, rows, _ = pipeline(tokens, None, crashing if stream else usageless)
    ctx = context(catalog(), "free-for-all", stream=stream)
    reply = await handler(ctx)
    if stream:
        await relay(ctx, reply)
    else:
        ctx.finish()
    await record.drain()
    assert tokens.compact_encodings == {"o200k_base"} and tokens.encodings == set()
    prompt, completion, cost = expected(o200k)
    assert (rows.rows[0]["prompt_tokens"], rows.rows[0]["completion_tokens"], rows.rows[0]["cost_nanos"]) == (
        prompt, completion, cost
    )
