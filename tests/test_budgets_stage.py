"""The budget stage with the usage stage in front of it, as the runtime composes them: worst-case
estimates, refusals, settling, fail-closed/open, and counting usage the upstream did not report."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from gateway.answer import Answer, tap_reply
from gateway.auth import Principal
from gateway.budgets.alerts import Alerts, BudgetMetrics
from gateway.budgets.backend import BudgetUnavailable, Refusal, Reservation
from gateway.budgets.memory_backend import MemoryBackend
from gateway.budgets.policy import BudgetBook
from gateway.budgets.stage import Budget
from gateway.catalog import Catalog
from gateway.context import Endpoint, JsonReply, Reply, RequestContext, StreamReply, Usage
from gateway.errors import RateLimited, ServiceUnavailable, UpstreamUnavailable
from gateway.pipeline import build_pipeline
from gateway.pipeline_types import Handler
from gateway.pricing import to_nanos
from gateway.storage import Database, open_database
from gateway.usage import MeterUsage
from gateway.usage.tokens import ByteBound, TiktokenTokenizer, TokenCounter
from gateway.wire import CompletionBuilder
from support.budgets import WORST, catalog_of, priced_models

HI = [{"role": "user", "content": "Hi there"}]


def models() -> dict[str, Any]:
    spec = priced_models()
    spec["aliases"]["unbounded"] = {"deployments": [
        {"provider": "openai", "base_url": "http://127.0.0.1:9/v1", "model": "house-model-7b",
         "input_cost_per_token": 0.0, "output_cost_per_token": 1e-5}]}
    return spec


def teams(**budget: Any) -> dict[str, Any]:
    return {"teams": {
        "t": {"budget": {"limit_usd": 1.0, "period": "daily", **budget}},
        "free-for-all": {},
    }}


@pytest.fixture(scope="module")
def tokens() -> TokenCounter:
    return TokenCounter()


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Database]:
    database = await open_database(f"sqlite:///{tmp_path / 'ledger.db'}")
    yield database
    await database.close()


def context(catalog: Catalog, alias: str, body: dict[str, Any], *, team: str = "t",
            endpoint: Endpoint = Endpoint.CHAT) -> RequestContext:
    ctx = RequestContext(request_id="req-1", endpoint=endpoint, raw_body=orjson.dumps(body), authorization=None,
                         catalog=catalog)
    ctx.principal = Principal("key_1", team, frozenset({"app"}))
    ctx.body = body
    ctx.alias = catalog.aliases[alias]
    ctx.deployments = ctx.alias.deployments
    ctx.stream = bool(body.get("stream"))
    return ctx


class Metered:
    """usage → budget → a fake upstream whose replies carry the answer tap, as in the runtime."""

    def __init__(self, budget: Budget, usage: MeterUsage) -> None:
        self.budget = budget
        self.usage = usage
        self.book = budget.book

    def __getattr__(self, name: str) -> Any:
        return getattr(self.budget, name)

    async def __call__(self, ctx: RequestContext, upstream: Handler) -> Reply:
        async def tapped(ctx: RequestContext) -> Reply:
            reply = await upstream(ctx)
            tap_reply(ctx, reply)
            return reply

        return await build_pipeline([self.usage, self.budget], tapped)(ctx)


def stage(tokens: TokenCounter, backend: Any) -> Metered:
    budget = Budget(backend, MeterUsage(tokens), BudgetBook(), BudgetMetrics(None), default_max_output_tokens=4096)
    return Metered(budget, MeterUsage(tokens))


def answered(cost_usage: Usage | None) -> Any:
    async def call_next(ctx: RequestContext) -> Reply:
        ctx.deployment = ctx.deployments[0]
        body = {"choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello to you, friend."}}]}
        if cost_usage is not None:
            ctx.usage = cost_usage
            ctx.cost = ctx.deployment.price.cost(cost_usage.prompt_tokens, cost_usage.completion_tokens)
            body["usage"] = {"prompt_tokens": cost_usage.prompt_tokens,
                             "completion_tokens": cost_usage.completion_tokens}
        return JsonReply(200, orjson.dumps(body), body)

    return call_next


async def test_worst_case_covers_every_deployment_and_choice(tokens: TokenCounter) -> None:
    catalog = catalog_of(models(), teams())
    budget = stage(tokens, None)
    o200k = TiktokenTokenizer(tokens.encoding("o200k_base")).count_messages(HI)
    cl100k = TiktokenTokenizer(tokens.encoding("cl100k_base")).count_messages(HI)

    async def worst(alias: str, body: dict[str, Any], endpoint: Endpoint = Endpoint.CHAT) -> int:
        ctx = context(catalog, alias, body, endpoint=endpoint)
        return budget.worst_case(ctx, await budget.usage.prompt_tokens(ctx))

    assert await worst("priced", {"messages": HI, "max_tokens": 100}) == WORST
    assert await worst("priced", {"messages": HI, "max_completion_tokens": 100, "n": 3}) == 3 * WORST
    # No max_tokens: the model's output limit bounds the answer.
    assert await worst("priced", {"messages": HI}) == to_nanos(16384 * 1e-4)
    # No limit anywhere: the configured default.
    assert await worst("unbounded", {"messages": HI}) == to_nanos(4096 * 1e-5)
    # A fallback may answer: the dearer of gpt-4o-mini and gpt-4, each with its own tokenizer.
    assert await worst("priced-pair", {"messages": HI, "max_tokens": 10}) == to_nanos(
        max(o200k * 1e-6 + 10 * 1e-4, cl100k * 3e-6 + 10 * 2e-4)
    )
    assert await worst("embed", {"input": "one two three"}, Endpoint.EMBEDDINGS) == to_nanos(3 * 1e-6)


async def test_a_refusal_names_the_budget_and_costs_nothing(tokens: TokenCounter, db: Database) -> None:
    catalog = catalog_of(models(), teams(limit_usd=0.015))
    backend = MemoryBackend(db, Alerts(BudgetMetrics(None), webhook_timeout_s=1))
    budget = stage(tokens, backend)
    first = context(catalog, "priced", {"messages": HI, "max_tokens": 100})
    await budget(first, answered(Usage(5, 60)))
    first.finish()  # as the server does once the answer is sent: settles
    assert first.budget_status == "admitted"
    called = []

    async def never(ctx: RequestContext) -> Reply:
        called.append(ctx)
        raise AssertionError("a refused request must not reach the upstream")

    second = context(catalog, "priced", {"messages": HI, "max_tokens": 100})
    with pytest.raises(RateLimited) as caught:
        await budget(second, never)
    error = caught.value
    assert (error.status, error.code) == (429, "budget_exceeded")
    assert error.extra["team"] == "t" and error.extra["budget"] == "team"
    assert error.extra["limit_usd"] == 0.015 and error.extra["spent_usd"] == pytest.approx(0.006)
    assert error.extra["period"] == "daily" and error.extra["resets_at"].endswith("T00:00:00Z")
    assert int(error.headers["retry-after"]) > 0 and error.headers["x-should-retry"] == "false"
    assert second.budget_status == "rejected" and second.cost == 0 and not called
    state = await backend.snapshot(catalog_budget(catalog), catalog_budget(catalog).window())
    assert state is not None and state["t"].spent == to_nanos(0.006) and state["t"].reserved == 0


def catalog_budget(catalog: Catalog) -> Any:
    return BudgetBook().for_team(catalog, "t")


async def test_failures_release_and_streams_settle_at_their_end(tokens: TokenCounter, db: Database) -> None:
    catalog = catalog_of(models(), teams())
    backend = MemoryBackend(db, Alerts(BudgetMetrics(None), webhook_timeout_s=1))
    budget = stage(tokens, backend)
    team = catalog_budget(catalog)

    async def failing(ctx: RequestContext) -> Reply:
        raise UpstreamUnavailable("down")

    failed = context(catalog, "priced", {"messages": HI, "max_tokens": 100})
    with pytest.raises(UpstreamUnavailable):
        await budget(failed, failing)
    failed.finish()
    state = await backend.snapshot(team, team.window())
    assert state is not None and (state["t"].spent, state["t"].reserved) == (0, 0)

    async def events() -> AsyncIterator[bytes]:
        yield b'data: {"choices":[{"index":0,"delta":{"content":"Hello"}}]}\n\n'
        yield b'data: {"choices":[],"usage":{"prompt_tokens":9,"completion_tokens":40}}\n\ndata: [DONE]\n\n'

    async def streaming(ctx: RequestContext) -> Reply:
        ctx.deployment = ctx.deployments[0]
        return StreamReply(events())

    ctx = context(catalog, "priced", {"messages": HI, "max_tokens": 100, "stream": True})
    reply = await budget(ctx, streaming)
    state = await backend.snapshot(team, team.window())
    assert state is not None and state["t"].reserved == WORST  # held while the stream runs
    assert isinstance(reply, StreamReply)
    async for _ in reply.events:
        pass
    # What the relay read from the stream; the usage stage prices it in a meter at finish,
    # before the budget stage's settlement (a usage-known callback), whatever the order.
    ctx.usage = Usage(9, 40)
    ctx.finish()
    state = await backend.snapshot(team, team.window())
    assert state is not None and (state["t"].spent, state["t"].reserved) == (to_nanos(40 * 1e-4), 0)


async def test_usage_the_upstream_did_not_report_is_counted(tokens: TokenCounter, db: Database) -> None:
    catalog = catalog_of(models(), teams())
    backend = MemoryBackend(db, Alerts(BudgetMetrics(None), webhook_timeout_s=1))
    budget = stage(tokens, backend)
    mini = TiktokenTokenizer(tokens.encoding("o200k_base"))

    ctx = context(catalog, "priced", {"messages": HI, "max_tokens": 100})
    await budget(ctx, answered(None))
    assert ctx.usage == Usage(mini.count_messages(HI), mini.count_text("Hello to you, friend."))
    assert ctx.cost == pytest.approx(ctx.usage.completion_tokens * 1e-4)

    async def cut_short() -> AsyncIterator[bytes]:
        yield b'data: {"choices":[{"index":0,"delta":{"content":"Hello to you,"}}]}\n\n'
        raise UpstreamUnavailable("the upstream went away")

    async def streaming(ctx: RequestContext) -> Reply:
        ctx.deployment = ctx.deployments[0]
        return StreamReply(cut_short())

    # A team without a budget still gets a counted usage (the ledger must not read zero).
    stream_ctx = context(catalog, "priced", {"messages": HI, "stream": True}, team="free-for-all")
    reply = await budget(stream_ctx, streaming)
    assert isinstance(reply, StreamReply)
    with pytest.raises(UpstreamUnavailable):
        async for _ in reply.events:
            pass
    stream_ctx.finish()
    assert stream_ctx.usage == Usage(mini.count_messages(HI), mini.count_text("Hello to you,"))
    assert stream_ctx.cost == pytest.approx(mini.count_text("Hello to you,") * 1e-4)


class Unavailable:
    name = "broken"

    def __init__(self) -> None:
        self.charged: list[int] = []

    async def reserve(self, *args: Any, **kwargs: Any) -> Reservation | Refusal:
        raise BudgetUnavailable("Redis is down")

    def settle(self, reservation: Reservation, cost_nanos: int) -> None:
        raise AssertionError("nothing was reserved")

    def charge(self, budget: Any, scopes: Any, cost_nanos: int, *, request_id: str) -> None:
        self.charged.append(cost_nanos)


async def test_hard_budgets_fail_closed_and_soft_budgets_fail_open(tokens: TokenCounter) -> None:
    backend = Unavailable()
    hard = stage(tokens, backend)
    catalog = catalog_of(models(), teams(hard=True))
    ctx = context(catalog, "priced", {"messages": HI, "max_tokens": 100})
    with pytest.raises(ServiceUnavailable) as caught:
        await hard(ctx, answered(Usage(5, 50)))
    assert (caught.value.status, caught.value.code) == (503, "budget_unavailable")
    assert ctx.budget_status == "unavailable"

    soft_catalog = catalog_of(models(), teams(hard=False))
    ctx = context(soft_catalog, "priced", {"messages": HI, "max_tokens": 100})
    reply = await stage(tokens, backend)(ctx, answered(Usage(5, 50)))
    ctx.finish()
    assert isinstance(reply, JsonReply) and ctx.budget_status == "unchecked"
    assert backend.charged == [to_nanos(50 * 1e-4)]  # counted once Redis is back


def gated(tokens: TokenCounter, monkeypatch: pytest.MonkeyPatch) -> tuple[threading.Event, list[str]]:
    """Make ``tokens`` build slowly: each load (of the compact encoding, the one a serving
    gateway builds first) waits for the returned gate, and is listed."""
    gate = threading.Event()
    loads: list[str] = []
    load = tokens._load_compact

    def slow_load(name: str) -> Any:
        loads.append(name)
        gate.wait(10)
        return load(name)

    monkeypatch.setattr(tokens, "_load_compact", slow_load)
    return gate, loads


#: ~600 tokens in either encoding, 3,000 bytes: the byte bound is five times the count. (Under
#: half of gpt-4's 8,192-token window, so the usage stage does not count it for the window.)
LONG = [{"role": "user", "content": "word " * 600}]


async def test_far_from_its_limit_a_team_reserves_the_bound_and_builds_no_tokenizer(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    catalog = catalog_of(models(), teams(limit_usd=1.0))
    tokens = TokenCounter()  # nothing built yet
    gate, loads = gated(tokens, monkeypatch)  # a build would hang: none may start
    backend = MemoryBackend(db, Alerts(BudgetMetrics(None), webhook_timeout_s=1))
    budget = stage(tokens, backend)
    held: list[int] = []

    async def upstream(ctx: RequestContext) -> Reply:
        state = await backend.snapshot(catalog_budget(catalog), catalog_budget(catalog).window())
        assert state is not None
        held.append(state["t"].reserved)
        return await answered(Usage(9, 10))(ctx)

    contexts = [context(catalog, "priced-pair", {"messages": HI, "max_tokens": 10}) for _ in range(5)]
    replies = await asyncio.wait_for(asyncio.gather(*(budget(ctx, upstream) for ctx in contexts)), 5)
    assert all(isinstance(reply, JsonReply) for reply in replies)
    assert loads == [] and tokens.encodings == tokens.compact_encodings == set() and tokens.building == set()
    # Each held the bound (one token per byte, plus framing) at gpt-4's price, the dearer fallback.
    bound = ByteBound().count_messages(HI)
    assert bound == 3 + 3 + len("user") + len("Hi there") and budget.usage.prompt_bound(contexts[0]) == bound
    one = to_nanos(bound * 3e-6 + 10 * 2e-4)
    assert held and max(held) <= 5 * one and all(amount % one == 0 for amount in held)
    for ctx in contexts:
        assert ctx.prompt_tokens is None  # the bound is never taken for a count
        ctx.finish()
    state = await backend.snapshot(catalog_budget(catalog), catalog_budget(catalog).window())
    assert state is not None and state["t"].reserved == 0
    assert state["t"].spent == 5 * to_nanos(9 * 1e-6 + 10 * 1e-4)  # the real cost, on gpt-4o-mini
    gate.set()


async def test_a_request_dear_against_its_limit_is_counted_exactly_one_build_for_all(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    tokens = TokenCounter()
    exact = TiktokenTokenizer(tokens.encoding("cl100k_base")).count_messages(HI)
    bound = ByteBound().count_messages(HI)
    exact_worst, bound_worst = (tokens * 3e-6 + 10 * 2e-4 for tokens in (exact, bound))
    assert exact < bound
    # A limit between the two (so the bound is far above 1 % of it): each request is counted
    # exactly before it reserves; one fits, a second does not.
    catalog = catalog_of(models(), teams(limit_usd=(exact_worst + bound_worst) / 2))
    tokens = TokenCounter()  # nothing built yet
    gate, loads = gated(tokens, monkeypatch)
    backend = MemoryBackend(db, Alerts(BudgetMetrics(None), webhook_timeout_s=1))
    budget = stage(tokens, backend)
    contexts = [context(catalog, "priced-pair", {"messages": HI, "max_tokens": 10}) for _ in range(3)]
    calls = [asyncio.ensure_future(budget(ctx, answered(Usage(9, 10)))) for ctx in contexts]
    await asyncio.sleep(0.1)
    assert not any(call.done() for call in calls)  # waiting for the count
    assert tokens.building == {"o200k_base", "cl100k_base"} and tokens.compact_encodings == set()
    gate.set()
    outcomes = await asyncio.gather(*calls, return_exceptions=True)
    assert sorted(loads) == ["cl100k_base", "o200k_base"]  # one build each, shared by three requests
    admitted = [ctx for ctx, outcome in zip(contexts, outcomes, strict=True) if isinstance(outcome, JsonReply)]
    refused = [outcome for outcome in outcomes if isinstance(outcome, RateLimited)]
    assert len(admitted) == 1 and len(refused) == 2
    assert admitted[0].prompt_tokens is not None and admitted[0].prompt_tokens["priced-pair#1"] == exact
    # What the admitted request holds is the exact worst case, not the bound.
    assert refused[0].extra["reserved_usd"] == pytest.approx(exact_worst)
    for ctx in contexts:
        ctx.finish()
    state = await backend.snapshot(catalog_budget(catalog), catalog_budget(catalog).window())
    assert state is not None and state["t"].reserved == 0 and state["t"].spent == to_nanos(9 * 1e-6 + 10 * 1e-4)


async def test_a_refused_bound_is_retried_with_the_exact_count(db: Database) -> None:
    tokens = TokenCounter()
    exact = TiktokenTokenizer(tokens.encoding("cl100k_base")).count_messages(HI)
    bound = ByteBound().count_messages(HI)
    exact_worst, bound_worst = (to_nanos(tokens * 3e-6 + 10 * 2e-4) for tokens in (exact, bound))
    catalog = catalog_of(models(), teams(limit_usd=1.0))  # the bound is 0.2 % of the limit
    backend = MemoryBackend(db, Alerts(BudgetMetrics(None), webhook_timeout_s=1))
    team = catalog_budget(catalog)
    # Spent so far: all but room for the exact worst case, not for the bound.
    room = (exact_worst + bound_worst) // 2
    await backend.reserve(team, team.scopes_for("key_1", "priced-pair"), 0, request_id="warm", key_id="key_1",
                          alias="priced-pair")
    backend.charge(team, team.scopes_for("key_1", "priced-pair"), to_nanos(1.0) - room, request_id="earlier")
    budget = stage(tokens, backend)
    ctx = context(catalog, "priced-pair", {"messages": HI, "max_tokens": 10})
    assert isinstance(await budget(ctx, answered(Usage(9, 10))), JsonReply)
    assert ctx.budget_status == "admitted"
    assert ctx.prompt_tokens is not None and ctx.prompt_tokens["priced-pair#1"] == exact
    ctx.finish()


async def test_a_long_prompt_dear_against_its_limit_is_counted_before_it_reserves(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 3,000 bytes at gpt-4's 3e-6 would be $0.009 of prompt, $0.011 with the output: over 1 %
    # of a $0.50 limit, so the exact count is made (and waited for) before the reservation.
    catalog = catalog_of(models(), teams(limit_usd=0.5))
    tokens = TokenCounter()
    gate, loads = gated(tokens, monkeypatch)
    backend = MemoryBackend(db, Alerts(BudgetMetrics(None), webhook_timeout_s=1))
    budget = stage(tokens, backend)
    ctx = context(catalog, "priced-pair", {"messages": LONG, "max_tokens": 10})
    held: list[int] = []

    async def upstream(ctx: RequestContext) -> Reply:
        state = await backend.snapshot(catalog_budget(catalog), catalog_budget(catalog).window())
        assert state is not None
        held.append(state["t"].reserved)
        return await answered(Usage(600, 10))(ctx)

    call = asyncio.ensure_future(budget(ctx, upstream))
    await asyncio.sleep(0.1)
    assert not call.done() and tokens.building == {"o200k_base", "cl100k_base"} and not tokens.compact_encodings
    gate.set()
    assert isinstance(await call, JsonReply)
    assert sorted(loads) == ["cl100k_base", "o200k_base"]
    exact = TiktokenTokenizer(tokens.encoding("cl100k_base")).count_messages(LONG)
    assert ctx.prompt_tokens is not None and ctx.prompt_tokens["priced-pair#1"] == exact
    assert held == [to_nanos(exact * 3e-6 + 10 * 2e-4)]
    ctx.finish()


def test_a_long_stream_is_kept_as_text_not_as_its_wire_form() -> None:
    """The answer tap keeps what a stream relayed for whoever reads it (a count when no usage
    comes, the cache); past the threshold it is folded into its assembled form, and the text
    read at the end is the same either way."""
    pieces = [f"word{i} " for i in range(2000)]
    events = [
        b"data: " + orjson.dumps({"id": "chatcmpl-x", "object": "chat.completion.chunk", "model": "m",
                                  "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}]})
        + b"\n\n"
        for piece in pieces
    ]
    chunks = [b"".join(events[i:i + 7]) for i in range(0, len(events), 7)]  # batched per upstream read
    answer = Answer(streamed=True, compact_at=4096)
    for chunk in chunks:
        answer.relayed(chunk)
        assert answer._size < 4096, "raw events never pile up past the threshold"
    assert not answer.empty and not answer.complete
    whole = CompletionBuilder()
    whole.add_parts(chunks)
    assert answer.output_text == "".join(pieces) == "".join(whole.texts)
    assert answer.text == "".join(pieces)
    with pytest.raises(ValueError):
        answer.completion()  # no [DONE]: not a complete answer
