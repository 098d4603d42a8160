"""The budget's reservation sent beside the cache lookup (``Budget.begin``): on a miss the two
round trips overlap; on a hit, or when the request fails before the budget stage, the
reservation is released unused; a hit is never refused nor charged, whatever the counters say.

First the stages themselves (a cache store and a budget backend whose answers the test holds
back), then a real gateway with the cache and the budget in Redis, through the ``openai`` SDK.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import openai
import orjson
import pytest
import redis
from conftest import FakeHandle, make_gateway
from openai import AsyncOpenAI

from gateway.answer import tap_reply
from gateway.auth import Principal
from gateway.budgets.alerts import Alerts, BudgetMetrics
from gateway.budgets.backend import BudgetUnavailable, Refusal, Reservation
from gateway.budgets.memory_backend import MemoryBackend
from gateway.budgets.policy import BudgetBook
from gateway.budgets.stage import Budget
from gateway.cache.base import LockState, Lookup
from gateway.cache.entry import Entry
from gateway.cache.memory import MemoryStore
from gateway.cache.metrics import CacheMetrics
from gateway.cache.stage import Cache
from gateway.catalog import Catalog
from gateway.config.settings import load_settings
from gateway.context import Endpoint, JsonReply, Reply, RequestContext, Usage
from gateway.errors import InvalidRequest, RateLimited, ServiceUnavailable
from gateway.observe import Metrics
from gateway.pipeline import build_pipeline
from gateway.pipeline_types import Handler, Stage
from gateway.pricing import to_nanos
from gateway.runtime import create_runtime
from gateway.storage import Database, open_database
from gateway.storage.schema import ledger
from gateway.usage import MeterUsage
from gateway.usage.tokens import TokenCounter
from support.budgets import catalog_of, counters, period_key, priced_models
from support.gateway_proc import ADMIN_KEY, GatewayConfig, GatewayProcess
from support.ledger import new_key, wait_for_rows

HI = [{"role": "user", "content": "Hi there"}]
ANSWER = {"choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello."}}],
          "usage": {"prompt_tokens": 9, "completion_tokens": 40}}


class HeldStore(MemoryStore):
    """The in-process store, made to look shared (as Redis is) and to answer lookups only when
    the test says so: what the budget does meanwhile can be seen."""

    shared = True

    def __init__(self) -> None:
        super().__init__(10**6)
        self.gate = asyncio.Event()
        self.looking = asyncio.Event()

    async def lookup(self, key: str, lock_token: str, lock_ms: int) -> Lookup:
        self.looking.set()
        await self.gate.wait()
        return await super().lookup(key, lock_token, lock_ms)


class Recorded:
    """A budget backend that records what was asked of it, over the in-process one (or with a
    fixed answer: a refusal, or counters that cannot be reached)."""

    name = "redis"

    def __init__(self, inner: MemoryBackend, answer: Refusal | BudgetUnavailable | None = None) -> None:
        self.inner = inner
        self.answer = answer
        self.reserved: list[int] = []
        self.settled: list[tuple[Reservation, int]] = []

    async def reserve(self, budget: Any, scopes: Any, amount: int, **kwargs: Any) -> Reservation | Refusal:
        self.reserved.append(amount)
        if isinstance(self.answer, BudgetUnavailable):
            raise self.answer
        if self.answer is not None:
            return self.answer
        return await self.inner.reserve(budget, scopes, amount, **kwargs)

    def settle(self, reservation: Reservation, cost_nanos: int) -> None:
        self.settled.append((reservation, cost_nanos))
        self.inner.settle(reservation, cost_nanos)

    def charge(self, *args: Any, **kwargs: Any) -> None:
        self.inner.charge(*args, **kwargs)

    async def snapshot(self, budget: Any, window: Any) -> Any:
        return await self.inner.snapshot(budget, window)

    async def start(self) -> None:
        await self.inner.start()

    async def close(self) -> None:
        await self.inner.close()


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Database]:
    database = await open_database(f"sqlite:///{tmp_path / 'ledger.db'}")
    yield database
    await database.close()


def catalog(*, hard: bool = True, window: int | None = None) -> Catalog:
    models = priced_models()
    if window is not None:
        models["aliases"]["priced"]["deployments"][0]["max_input_tokens"] = window
    return catalog_of(models, {"teams": {"t": {
        "cache": {"enabled": True}, "budget": {"limit_usd": 10.0, "period": "daily", "hard": hard},
    }}})


def request(catalog: Catalog, content: str = "Hi there") -> RequestContext:
    body = {"messages": [{"role": "user", "content": content}], "max_tokens": 100, "temperature": 0}
    ctx = RequestContext(request_id=uuid.uuid4().hex, endpoint=Endpoint.CHAT, raw_body=orjson.dumps(body),
                         authorization=None, catalog=catalog)
    ctx.principal = Principal("key_1", "t", frozenset({"app"}))
    ctx.body, ctx.requested_model = body, "priced"
    ctx.alias = catalog.aliases["priced"]
    ctx.deployments = ctx.alias.deployments
    return ctx


class Upstream:
    def __init__(self) -> None:
        self.calls = 0

    async def __call__(self, ctx: RequestContext) -> Reply:
        self.calls += 1
        ctx.deployment = ctx.deployments[0]
        ctx.usage = Usage(9, 40)
        ctx.cost = ctx.deployment.price.cost(9, 40)
        reply = JsonReply(200, orjson.dumps(ANSWER), ANSWER)
        tap_reply(ctx, reply)
        return reply


def pipeline(store: HeldStore, backend: Recorded, upstream: Handler, *, between: Stage | None = None,
             metrics: BudgetMetrics | None = None) -> Handler:
    """cache → usage → budget → upstream, wired as ``Runtime.build`` wires them."""
    tokens = TokenCounter()
    usage = MeterUsage(tokens)
    budget = Budget(backend, usage, BudgetBook(), metrics or BudgetMetrics(None), default_max_output_tokens=4096)
    cache = Cache(store, CacheMetrics(Metrics(), "redis"), wait_s=1.0)
    cache.begin_reservation = budget.begin
    stages: list[Stage] = [cache, usage, *([between] if between is not None else []), budget]
    return build_pipeline(stages, upstream)


async def settled(backend: Recorded, count: int) -> None:
    """Until ``count`` settlements were made: a released reservation is settled once its answer
    is in (the in-process counters may first be rebuilt from the ledger)."""
    for _ in range(500):
        if len(backend.settled) >= count:
            return
        await asyncio.sleep(0.01)


async def test_the_reservation_leaves_before_the_lookup_answers(db: Database) -> None:
    store, upstream = HeldStore(), Upstream()
    backend = Recorded(MemoryBackend(db, Alerts(BudgetMetrics(None), webhook_timeout_s=1)))
    handler = pipeline(store, backend, upstream)
    ctx = request(catalog())
    asked = asyncio.ensure_future(handler(ctx))
    await store.looking.wait()
    for _ in range(5):
        await asyncio.sleep(0)
    assert backend.reserved == [to_nanos(0.01)] and not asked.done()  # sent while the lookup waits
    store.gate.set()
    reply = await asked
    assert isinstance(reply, JsonReply) and upstream.calls == 1
    assert ctx.cache_status == "MISS" and ctx.budget_status == "admitted" and ctx.head_start is None
    ctx.finish()
    assert backend.reserved == [to_nanos(0.01)]  # the one sent early, not a second
    assert [cost for _, cost in backend.settled] == [to_nanos(40 * 1e-4)]


async def test_a_hit_releases_the_reservation_and_costs_nothing(db: Database) -> None:
    store, upstream = HeldStore(), Upstream()
    store.gate.set()
    inner = MemoryBackend(db, Alerts(BudgetMetrics(None), webhook_timeout_s=1))
    backend = Recorded(inner)
    handler = pipeline(store, backend, upstream)
    book = catalog()
    first = request(book)
    await handler(first)
    first.finish()
    hit = request(book)
    reply = await handler(hit)
    hit.finish()
    await settled(backend, 2)
    assert isinstance(reply, JsonReply) and upstream.calls == 1 and hit.cache_status == "HIT"
    assert hit.budget_status is None and hit.cost == 0.0
    assert len(backend.reserved) == 2  # the hit's went out beside its lookup...
    assert [cost for _, cost in backend.settled] == [to_nanos(40 * 1e-4), 0]  # ...and came back unused
    team = BudgetBook().for_team(book, "t")
    assert team is not None
    state = await inner.snapshot(team, team.window())
    assert state is not None and (state["t"].spent, state["t"].reserved) == (to_nanos(40 * 1e-4), 0)


@pytest.mark.parametrize("answer", [Refusal, BudgetUnavailable], ids=["refused", "unavailable"])
async def test_a_hit_is_served_whatever_the_counters_say(db: Database, answer: type) -> None:
    store, upstream = HeldStore(), Upstream()
    store.gate.set()
    book = catalog()
    team = BudgetBook().for_team(book, "t")
    assert team is not None
    backend = Recorded(MemoryBackend(db, Alerts(BudgetMetrics(None), webhook_timeout_s=1)))
    await pipeline(store, backend, upstream)(request(book))  # fills the cache while the counters are fine
    backend.answer = (Refusal(team.team_scope, to_nanos(10.0), 0, team.window()) if answer is Refusal
                      else BudgetUnavailable("Redis is down"))
    metrics = BudgetMetrics(None)
    handler = pipeline(store, backend, upstream, metrics=metrics)
    hit = request(book)
    reply = await handler(hit)
    assert isinstance(reply, JsonReply) and hit.cache_status == "HIT" and hit.budget_status is None
    assert upstream.calls == 1 and metrics.rejections.labels("t", "team")._value.get() == 0
    # The same counters refuse a miss, as they would without the early reservation.
    with pytest.raises(RateLimited if answer is Refusal else ServiceUnavailable):
        await handler(request(book, "Something nobody asked"))
    assert upstream.calls == 1


async def test_a_request_refused_before_the_budget_stage_gives_the_reservation_back(db: Database) -> None:
    store, upstream = HeldStore(), Upstream()
    store.gate.set()
    inner = MemoryBackend(db, Alerts(BudgetMetrics(None), webhook_timeout_s=1))
    backend = Recorded(inner)

    class Refuses:
        async def __call__(self, ctx: RequestContext, call_next: Handler) -> Reply:
            raise InvalidRequest("no")

    book = catalog()
    ctx = request(book)
    with pytest.raises(InvalidRequest):
        await pipeline(store, backend, upstream, between=Refuses())(ctx)
    await settled(backend, 1)
    assert len(backend.reserved) == 1 and [cost for _, cost in backend.settled] == [0]
    assert ctx.head_start is None and upstream.calls == 0
    team = BudgetBook().for_team(book, "t")
    assert team is not None
    state = await inner.snapshot(team, team.window())
    assert state is not None and (state["t"].spent, state["t"].reserved) == (0, 0)


class AnotherReplicaLeads(HeldStore):
    """A store whose lookups find the key locked by another replica, which never answers
    before the test says so."""

    def __init__(self) -> None:
        super().__init__()
        self.waiting = asyncio.Event()
        self.answered = asyncio.Event()

    async def lookup(self, key: str, lock_token: str, lock_ms: int) -> Lookup:
        await super().lookup(key, lock_token, lock_ms)
        return Lookup(None, LockState.HELD_ELSEWHERE)

    async def wait_for(self, key: str, timeout_s: float) -> Entry | None:
        self.waiting.set()
        await self.answered.wait()
        return None  # the other replica gave up


async def test_waiting_for_another_replica_holds_no_reservation(db: Database) -> None:
    store, upstream = AnotherReplicaLeads(), Upstream()
    store.gate.set()
    inner = MemoryBackend(db, Alerts(BudgetMetrics(None), webhook_timeout_s=1))
    backend = Recorded(inner)
    ctx = request(catalog())
    asked = asyncio.ensure_future(pipeline(store, backend, upstream)(ctx))
    await store.waiting.wait()
    await settled(backend, 1)
    assert [cost for _, cost in backend.settled] == [0]  # given back while the wait lasts
    store.answered.set()
    reply = await asked
    ctx.finish()
    assert isinstance(reply, JsonReply) and upstream.calls == 1 and ctx.budget_status == "admitted"
    assert len(backend.reserved) == 2  # reserved again, as usual, once the wait was over
    assert [cost for _, cost in backend.settled] == [0, to_nanos(40 * 1e-4)]


# -- through a real gateway: the cache and the budget in Redis ---------------------------------

def _teams(payer: str, broke: str) -> dict[str, Any]:
    cache = {"enabled": True, "share_scope": "head-start"}
    return {"teams": {
        payer: {"models": ["*"], "cache": cache, "budget": {"limit_usd": 10.0, "period": "daily", "hard": True}},
        broke: {"models": ["*"], "cache": cache, "budget": {"limit_usd": 10.0, "period": "daily", "hard": True}},
    }}


async def released(client: redis.Redis, team: str) -> None:
    """Until nothing is reserved: settlements (and released reservations) go out in the background."""
    for _ in range(200):
        if counters(client, team)["r:t"] == 0:
            return
        await asyncio.sleep(0.05)


@pytest.mark.redis
async def test_through_the_gateway_hits_give_back_their_reservations(
    tmp_path: Path, fake: FakeHandle, redis_url: str
) -> None:
    payer, broke = ("team-" + uuid.uuid4().hex[:8] for _ in range(2))
    database_url = f"sqlite:///{tmp_path / 'gateway.db'}"
    models = priced_models(f"{fake.url}/v1")
    models["aliases"]["narrow"] = {"deployments": [{**models["aliases"]["priced"]["deployments"][0],
                                                     "max_input_tokens": 64}]}
    proc: GatewayProcess = make_gateway(tmp_path / "gw", fake.url, database_url, redis_url=redis_url,
                                        models=models, teams=_teams(payer, broke)).start(timeout=60)
    rclient = redis.Redis.from_url(redis_url)
    try:
        keys = {team: new_key(proc.url, ADMIN_KEY, team)[1] for team in (payer, broke)}
        clients = {team: AsyncOpenAI(base_url=f"{proc.url}/v1", api_key=key, max_retries=0, timeout=30)
                   for team, key in keys.items()}
        question = [{"role": "user", "content": f"head start {uuid.uuid4().hex}"}]

        async def ask(team: str, stream: bool, messages: Any = question, model: str = "priced") -> str:
            client = clients[team]
            if stream:
                raw = await client.chat.completions.with_raw_response.create(
                    model=model, messages=messages, max_tokens=100, temperature=0, stream=True,
                    stream_options={"include_usage": True})
                async for _ in raw.parse():
                    pass
            else:
                raw = await client.chat.completions.with_raw_response.create(
                    model=model, messages=messages, max_tokens=100, temperature=0)
            return str(raw.headers["x-cache"])

        assert await ask(payer, False) == "MISS"
        assert [await ask(payer, True), await ask(payer, False)] == ["HIT", "HIT"]
        assert await ask(broke, False, [{"role": "user", "content": "builds the counters"}]) == "MISS"
        # Spend the broke team's whole budget (once its first request settled): every
        # reservation is refused from now on...
        await released(rclient, broke)
        rclient.hset(period_key(broke), "s:t", to_nanos(10.0))
        for stream in (False, True):  # ...yet the answer its scope already paid for is free
            assert await ask(broke, stream) == "HIT"
        with pytest.raises(openai.RateLimitError):
            await ask(broke, False, [{"role": "user", "content": f"new {uuid.uuid4().hex}"}])
        # Refused by the usage stage (the prompt is past the window) after its reservation left.
        with pytest.raises(openai.BadRequestError) as caught:
            await ask(payer, False, [{"role": "user", "content": "word " * 200}], model="narrow")
        assert caught.value.code == "context_length_exceeded"

        for team in (payer, broke):
            await released(rclient, team)
        rows = await wait_for_rows(database_url, ledger.c.team.in_([payer, broke]), until=lambda rows: len(rows) == 8)
        paid = [row for row in rows if row["team"] == payer]
        assert sorted(row["kind"] for row in paid) == ["cache_hit", "cache_hit", "error", "request"]
        assert counters(rclient, payer) == {"s:t": sum(row["cost_nanos"] for row in paid), "r:t": 0}
        assert counters(rclient, payer)["s:t"] > 0
        assert counters(rclient, broke) == {"s:t": to_nanos(10.0), "r:t": 0}
        assert sorted(row["kind"] for row in rows if row["team"] == broke) == [
            "cache_hit", "cache_hit", "rejected", "request"]
        assert all(row["cost_nanos"] == 0 for row in rows if row["kind"] == "cache_hit")
        for client in clients.values():
            await client.close()
    finally:
        proc.stop()


@pytest.mark.parametrize("where", ["redis", "in-process"])
async def test_the_runtime_sends_it_early_only_when_both_wait_on_redis(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str, request: pytest.FixtureRequest
) -> None:
    """In-process, a lookup and a reservation wait on nothing: beginning early would only cost a task."""
    redis_url = request.getfixturevalue("redis_url") if where == "redis" else ""
    teams = {"teams": {"t": {"models": ["*"], "cache": {"enabled": True},
                             "budget": {"limit_usd": 5.0, "period": "daily"}}}}
    config = GatewayConfig(root=tmp_path, upstream="http://127.0.0.1:9", database_url=f"sqlite:///{tmp_path / 'g.db'}",
                           redis_url=redis_url, teams=teams).write()
    monkeypatch.setenv("GATEWAY_ADMIN_KEY", ADMIN_KEY)
    monkeypatch.setenv("TEST_PROVIDER_KEY", "sk-test-provider")
    runtime = await create_runtime(load_settings(config))
    try:
        assert isinstance(runtime.cache, Cache) and isinstance(runtime.budget, Budget)
        if where == "redis":
            assert runtime.cache.begin_reservation == runtime.budget.begin
        else:
            assert runtime.cache.begin_reservation is None
    finally:
        await runtime.close()
