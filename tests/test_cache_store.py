"""The cache's parts below the stage: entries, the embedded store, streams, the breaker, Redis.

Server-level behaviour is in test_cache_server.py and test_cache_replicas.py; these pin the
pieces' contracts (LRU order, TTL, the memory bound, stream assembly and replay, the Redis
lock protocol, the breaker's state changes) where failures are easiest to read.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from redis.asyncio import Redis

from gateway.answer import Answer, AnswerTap
from gateway.auth import Principal
from gateway.cache import Cache
from gateway.cache.base import LockState
from gateway.cache.breaker import CircuitBreaker
from gateway.cache.entry import Entry, decode_entry, encode_entry
from gateway.cache.keys import PurgeFilter, entry_key, shared_scope, team_scope
from gateway.cache.memory import ENTRY_OVERHEAD, MemoryStore
from gateway.cache.metrics import CacheMetrics
from gateway.cache.redis_store import RedisStore
from gateway.catalog import build_catalog
from gateway.config.policies import ModelsFile, PolicyBundle, TeamsFile
from gateway.context import Endpoint, JsonReply, Reply, RequestContext, Usage
from gateway.errors import UpstreamUnavailable
from gateway.observe import Metrics
from gateway.providers import mock_responses as mock
from gateway.redis.wire import RedisWire
from gateway.wire import assemble, replay
from support.gateway_proc import free_port


def make_entry(body: bytes = b'{"choices":[]}', *, created: float = 1_700_000_000.0) -> Entry:
    return Entry(created, 12, 34, "fake-chat#0", body)


def key(n: int | str, scope: str = "t.alpha", alias: str = "fake-chat") -> str:
    return entry_key(scope, alias, None, None, f"{n:0>32}")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# -- entries ----------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 100, 4095, 4096, 100_000])
def test_entry_round_trip(size: int) -> None:
    body = orjson.dumps({"choices": [{"message": {"content": "x" * size}}]})
    entry = Entry(1_700_000_123.25, 7, 2**31, "alias#3", body)
    raw = encode_entry(entry, compress_min=4096)
    assert decode_entry(raw) == entry
    if size >= 4096:
        assert len(raw) < len(body) / 10  # repetitive JSON compresses well
    assert decode_entry(encode_entry(entry, compress_min=0)) == entry


@pytest.mark.parametrize("raw", [b"", b"\x01\x00", b"\x09" + b"\x00" * 40, b"not an entry at all, just text"])
def test_foreign_values_are_rejected(raw: bytes) -> None:
    with pytest.raises(ValueError):
        decode_entry(raw)


# -- the embedded store -----------------------------------------------------------------------


async def test_memory_store_evicts_least_recently_used() -> None:
    body = b"x" * 1000
    size = 1000 + len(key(1)) + len("fake-chat#0") + ENTRY_OVERHEAD
    store = MemoryStore(max_bytes=2 * size)
    store.put(key(1), make_entry(body), 60_000, "")
    store.put(key(2), make_entry(body), 60_000, "")
    assert (await store.lookup(key(1), "", 0)).entry is not None  # 1 is now the most recent
    store.put(key(3), make_entry(body), 60_000, "")
    assert store.get(key(2)) is None
    assert store.get(key(1)) is not None and store.get(key(3)) is not None
    assert store.evictions == 1 and len(store) == 2


async def test_memory_store_expires_entries() -> None:
    clock = Clock()
    store = MemoryStore(max_bytes=10**6, clock=clock)
    store.put(key(1), make_entry(), 5_000, "")
    store.put(key(2), make_entry(), 60_000, "")
    clock.now += 4.9
    assert store.get(key(1)) is not None
    clock.now += 0.2
    assert store.get(key(1)) is None
    assert store.get(key(2)) is not None
    assert len(store) == 1


async def test_memory_store_sweeps_expired_entries_without_reads() -> None:
    clock = Clock()
    store = MemoryStore(max_bytes=10**8, clock=clock)
    for n in range(100):
        store.put(key(f"old{n}"), make_entry(), 1_000, "")
    clock.now += 2
    for n in range(600):
        store.put(key(f"new{n}"), make_entry(), 60_000, "")
    assert len(store) == 600  # the sweep dropped the expired ones nobody read again


@settings(max_examples=50, deadline=None)
@given(sizes=st.lists(st.integers(min_value=0, max_value=5000), min_size=1, max_size=60))
def test_memory_store_never_exceeds_its_bound(sizes: list[int]) -> None:
    store = MemoryStore(max_bytes=20_000)
    for n, size in enumerate(sizes):
        store.put(key(n % 17), make_entry(b"y" * size), 60_000, "")
        assert store.size_bytes <= store.max_bytes
        assert store.size_bytes == sum(slot[2] for slot in store._entries.values())


def test_memory_store_skips_entries_bigger_than_the_bound() -> None:
    store = MemoryStore(max_bytes=2048)
    store.put(key(1), make_entry(b"z" * 4096), 60_000, "")
    assert len(store) == 0 and store.size_bytes == 0


async def test_memory_store_keeps_bytes_not_parsed_bodies() -> None:
    store = MemoryStore(max_bytes=10**6)
    store.put(key(1), Entry(1.0, 1, 1, "d", b"{}", data={"big": "parsed"}), 60_000, "")
    entry = store.get(key(1))
    assert entry is not None and entry.data is None and entry.body == b"{}"


async def test_memory_store_purges_by_parts() -> None:
    store = MemoryStore(max_bytes=10**6)
    keys = [
        entry_key(team_scope("alpha"), "fake-chat", None, None, "a" * 32),
        entry_key(team_scope("alpha"), "mock", "greet", 1, "b" * 32),
        entry_key(team_scope("alpha"), "mock", "greet", 2, "c" * 32),
        entry_key(team_scope("beta"), "fake-chat", "greet", 2, "d" * 32),
        entry_key(shared_scope("alpha"), "fake-chat", None, None, "e" * 32),
    ]
    for k in keys:
        store.put(k, make_entry(), 60_000, "")
    assert await store.purge(PurgeFilter(prompt="greet", version=2)) == 2
    assert await store.purge(PurgeFilter(scopes=(team_scope("alpha"),), alias="fake-chat")) == 1
    assert await store.purge(PurgeFilter(scopes=(team_scope("alpha"),))) == 1
    assert [k for k in keys if store.get(k) is not None] == [keys[4]]  # a shared scope is not the team's


# -- streams ----------------------------------------------------------------------------------

TOOLS = [{"type": "function", "function": {"name": "lookup", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]

bodies = st.fixed_dictionaries(
    {"model": st.just("m"), "messages": st.just([{"role": "user", "content": "Weather in Paris, please?"}])},
    optional={
        "n": st.integers(min_value=1, max_value=3),
        "logprobs": st.just(True),
        "top_logprobs": st.integers(min_value=0, max_value=3),
        "tools": st.just(TOOLS),
        "max_tokens": st.integers(min_value=1, max_value=5),
        "stop": st.just(["Paris"]),
    },
)


def events_of(chunks: list[dict[str, Any]]) -> list[bytes]:
    return [mock.sse_event(chunk) for chunk in chunks] + [mock.SSE_DONE]


@settings(max_examples=60, deadline=None)
@given(body=bodies, pieces=st.integers(min_value=1, max_value=9), include_usage=st.booleans())
def test_a_stream_assembles_into_the_completion_it_carried(
    body: dict[str, Any], pieces: int, include_usage: bool
) -> None:
    full = mock.chat_completion(body, created=1)
    streamed = {**body, "stream": True, "stream_options": {"include_usage": include_usage}}
    chunks = mock.chat_stream_chunks(streamed, created=1, chunks=pieces)
    usage = Usage(full["usage"]["prompt_tokens"], full["usage"]["completion_tokens"])
    built = assemble(events_of(chunks), usage)
    assert built["usage"]["completion_tokens"] == full["usage"]["completion_tokens"]
    assert [c["finish_reason"] for c in built["choices"]] == [c["finish_reason"] for c in full["choices"]]
    for got, want in zip(built["choices"], full["choices"], strict=True):
        assert got["message"]["content"] == want["message"]["content"]
        assert got["message"].get("tool_calls") == want["message"].get("tool_calls")
        assert got["logprobs"] == want["logprobs"]


@settings(max_examples=60, deadline=None)
@given(body=bodies, include_usage=st.booleans())
def test_replay_then_assemble_gives_back_the_stored_completion(body: dict[str, Any], include_usage: bool) -> None:
    full = mock.chat_completion(body, created=1)
    events = replay(full, include_usage)
    assert events.endswith(b"data: [DONE]\n\n")
    chunks = [orjson.loads(e[6:]) for e in events.split(b"\n\n") if e.startswith(b"data: {")]
    assert all(chunk["object"] == "chat.completion.chunk" and chunk["id"] == full["id"] for chunk in chunks)
    assert ("usage" in chunks[-1] and chunks[-1]["choices"] == []) is include_usage
    # Without a usage chunk the usage comes from what the upstream reported (ctx.usage).
    usage = None if include_usage else Usage(full["usage"]["prompt_tokens"], full["usage"]["completion_tokens"])
    assert assemble([events], usage) == full


def test_broken_streams_are_not_assembled() -> None:
    chunks = mock.chat_stream_chunks({"messages": [{"role": "user", "content": "hi"}], "stream": True})
    with pytest.raises(ValueError):
        assemble(events_of(chunks[:-1]), None)  # no finish chunk
    error = b'data: {"error": {"message": "overloaded"}}\n\n'
    with pytest.raises(ValueError):
        assemble([*events_of(chunks)[:2], error, mock.SSE_DONE], None)
    with pytest.raises(ValueError):
        assemble([b"data: {not json\n\n", mock.SSE_DONE], None)
    with pytest.raises(ValueError):
        assemble([mock.SSE_DONE], None)


async def _events(batches: list[bytes], closed: list[bool]) -> AsyncIterator[bytes]:
    try:
        for batch in batches:
            yield batch
    finally:
        closed.append(True)


async def test_the_answer_tap_passes_events_through_and_knows_when_complete() -> None:
    closed: list[bool] = []
    chunks = mock.chat_stream_chunks({"messages": [{"role": "user", "content": "hi"}], "stream": True})
    batches = events_of(chunks)
    answer = Answer(streamed=True)
    assert [batch async for batch in AnswerTap(_events(batches, closed), answer)] == batches
    assert answer.complete and answer.completion()["choices"][0]["finish_reason"] == "stop"
    assert answer.text == mock.chat_completion({"messages": [{"role": "user", "content": "hi"}]})[
        "choices"][0]["message"]["content"]

    cut = Answer(streamed=True)
    assert [batch async for batch in AnswerTap(_events(batches[:1], closed), cut)] == batches[:1]
    assert not cut.complete and not cut.empty
    with pytest.raises(ValueError):
        cut.completion()

    # Folded early (a long stream): the same completion, the raw events gone.
    folded = Answer(streamed=True, compact_at=10)
    assert len([batch async for batch in AnswerTap(_events(batches, closed), folded)]) == len(batches)
    assert folded._parts == [] or folded._parts == [batches[-1]]
    assert folded.completion() == answer.completion()


async def test_closing_an_unstarted_tap_closes_the_upstream() -> None:
    closed: list[bool] = []
    upstream = _events([b"data: {}\n\n"], closed)
    await anext(upstream)  # started, as a provider's stream is when the reply is built
    await AnswerTap(upstream, Answer(streamed=True)).aclose()
    assert closed == [True]


# -- the circuit breaker ----------------------------------------------------------------------


async def test_breaker_opens_after_consecutive_failures_and_closes_when_the_probe_succeeds(
    caplog: pytest.LogCaptureFixture,
) -> None:
    alive = False
    changes: list[bool] = []

    async def probe() -> bool:
        return alive

    breaker = CircuitBreaker("thing", failures=3, retry_s=0.01, probe=probe, on_change=changes.append)
    caplog.set_level(logging.INFO, logger="gateway.cache")
    breaker.failure("X")
    breaker.failure("X")
    breaker.success()  # a success in between: not consecutive
    breaker.failure("X")
    breaker.failure("X")
    assert breaker.closed
    breaker.failure("TimeoutError")
    assert not breaker.closed and changes == [True]
    for _ in range(10):
        breaker.failure("X")  # while open: no new transitions, no new log lines
    await asyncio.sleep(0.05)
    assert not breaker.closed
    alive = True
    for _ in range(100):
        if breaker.closed:
            break
        await asyncio.sleep(0.01)
    assert breaker.closed and changes == [True, False]
    lines = [r.getMessage() for r in caplog.records if r.name == "gateway.cache"]
    assert len(lines) == 2 and "open" in lines[0] and "TimeoutError" in lines[0] and "closed" in lines[1]
    await breaker.close()


# -- the Redis store (real Redis) -------------------------------------------------------------


@pytest.fixture
async def redis_client(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url, socket_timeout=0.5)
    await client.flushdb()
    yield client
    await client.flushdb()
    await client.aclose()


def redis_store(client: Redis, url: str | None = None, **overrides: Any) -> RedisStore:
    """A store on ``client``'s Redis (its wire opens its own connection to the same URL)."""
    options: dict[str, Any] = {
        "op_timeout_s": 0.05, "compress_min": 4096, "max_pending": 100, "breaker_failures": 3,
        "breaker_retry_s": 0.05,
    }
    options.update(overrides)
    kwargs = client.connection_pool.connection_kwargs
    url = url or f"redis://{kwargs['host']}:{kwargs['port']}/{kwargs.get('db', 0)}"
    return RedisStore(url, CacheMetrics(Metrics(), "redis"), admin=RedisWire(url, timeout_s=0.5), **options)


async def test_redis_lookup_takes_the_lock_once_and_a_write_releases_it(redis_client: Redis) -> None:
    store = redis_store(redis_client)
    k = key(1)
    first = await store.lookup(k, "token-a", 5_000)
    second = await store.lookup(k, "token-b", 5_000)
    assert (first.entry, first.lock) == (None, LockState.ACQUIRED)
    assert (second.entry, second.lock) == (None, LockState.HELD_ELSEWHERE)
    waiter = asyncio.create_task(store.wait_for(k, 2.0))
    await asyncio.sleep(0.02)
    entry = make_entry(orjson.dumps({"answer": "x" * 5000}))
    store.put(k, entry, 60_000, "token-a")
    assert await waiter == entry
    assert await redis_client.exists("gwl" + k[3:]) == 0
    assert 0 < await redis_client.pttl(k) <= 60_000
    assert len(await redis_client.get(k) or b"") < 1000  # stored compressed
    hit = await store.lookup(k, "token-c", 5_000)
    assert hit.entry == entry and hit.lock is LockState.NOT_ASKED
    await store.close()


async def test_a_waiter_stops_waiting_when_the_leader_gives_up(redis_client: Redis) -> None:
    store = redis_store(redis_client)
    k = key(2)
    assert (await store.lookup(k, "leader", 5_000)).lock is LockState.ACQUIRED
    store.release(k, "not-the-leader")  # only the holder's token releases it
    waiter = asyncio.create_task(store.wait_for(k, 5.0))
    await asyncio.sleep(0.05)
    assert not waiter.done()
    store.release(k, "leader")
    assert await asyncio.wait_for(waiter, 1.0) is None
    assert (await store.lookup(k, "next", 5_000)).lock is LockState.ACQUIRED
    await store.close()


async def test_background_writes_are_bounded_and_finished_on_close(redis_client: Redis) -> None:
    store = redis_store(redis_client, max_pending=5)
    assert (await store.lookup(key("warm"), "", 0)).entry is None  # connected, lookup script loaded
    for n in range(8):
        store.put(key(n), make_entry(), 60_000, "")  # queued for after this request's answer
    assert (await store.stats())["pending_writes"] == 5
    assert await redis_client.exists(*[key(n) for n in range(8)]) == 0  # nothing sent inline
    await store.close()  # sends what was queued and waits for the replies
    assert await redis_client.exists(*[key(n) for n in range(8)]) == 5
    assert store._metrics.error_count == 3  # the three over the bound were dropped, and counted


async def test_the_store_survives_a_script_flush(redis_client: Redis) -> None:
    store = redis_store(redis_client)
    k = key("flush")
    store.put(k, make_entry(), 60_000, "")
    await _settle(store)
    await redis_client.script_flush()
    assert (await store.lookup(k, "t", 1000)).entry == make_entry()  # NOSCRIPT: loaded again
    await redis_client.script_flush()
    store.put(key("flush2"), make_entry(b"{}"), 60_000, "")
    await _settle(store)
    assert (await store.lookup(key("flush2"), "", 0)).entry == make_entry(b"{}")
    assert store.available and store._metrics.error_count == 0
    await store.close()


async def _settle(store: RedisStore) -> None:
    for _ in range(200):
        if (await store.stats())["pending_writes"] == 0:
            return
        await asyncio.sleep(0.005)
    raise AssertionError("background writes did not finish")


async def test_redis_purge_matches_parts_exactly(redis_client: Redis) -> None:
    store = redis_store(redis_client)
    doomed = entry_key(team_scope("a*"), "m", "p", 3, "1" * 32)
    kept = [
        entry_key(team_scope("ab"), "m", "p", 3, "2" * 32),  # would match an unescaped glob "a*"
        entry_key(team_scope("a*"), "m", "p", 4, "3" * 32),
        entry_key(team_scope("a*"), "m", "p:3", None, "4" * 32),
    ]
    for k in [doomed, *kept]:
        await redis_client.set(k, b"v")
    await redis_client.set("unrelated:key", b"v")
    assert await store.purge(PurgeFilter(scopes=(team_scope("a*"),), prompt="p", version=3)) == 1
    assert await redis_client.exists(doomed) == 0
    assert await redis_client.exists(*kept, "unrelated:key") == 4
    await store.close()


async def test_a_purge_walks_every_scan_page_and_unlinks_in_batches(redis_client: Redis) -> None:
    """More keys than one SCAN page (COUNT 1000) and than one UNLINK batch (500)."""
    store = redis_store(redis_client)
    doomed = [entry_key(team_scope("t"), "m", "p", 3, f"{n:032x}") for n in range(2_500)]
    kept = [entry_key(team_scope("u"), "m", "p", 3, f"{n:032x}") for n in range(1_500)]
    async with redis_client.pipeline(transaction=False) as pipe:
        for k in [*doomed, *kept]:
            pipe.set(k, b"v")
        await pipe.execute()
    assert await store.purge(PurgeFilter(scopes=(team_scope("t"),))) == 2_500
    assert await redis_client.exists(*doomed) == 0
    assert await redis_client.exists(*kept) == 1_500
    await store.close()


async def test_a_dead_redis_fails_fast_and_opens_the_breaker() -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    dead = Redis.from_url(url, socket_timeout=0.05, socket_connect_timeout=0.05)
    store = redis_store(dead, url, breaker_retry_s=60)
    loop = asyncio.get_running_loop()
    started = loop.time()
    for n in range(3):
        assert (await store.lookup(key(n), "t", 1000)).lock is LockState.FAILED
    assert not store.available
    opened = loop.time()
    for n in range(1000):
        assert (await store.lookup(key(n), "t", 1000)).lock is LockState.FAILED
    assert loop.time() - opened < 0.5  # skipped without touching the network
    assert opened - started < 3 * 0.2
    store.put(key(1), make_entry(), 1000, "t")  # dropped, not queued
    assert (await store.stats())["pending_writes"] == 0
    await store.close()
    await dead.aclose()


# -- the stage in-process: single-flight edge cases -------------------------------------------


def _stage_context(question: str = "hi") -> RequestContext:
    catalog = _STAGE_CATALOG
    ctx = RequestContext(request_id="r", endpoint=Endpoint.CHAT, raw_body=b"", authorization=None, catalog=catalog)
    ctx.principal = Principal("key_1", "alpha", frozenset({"app"}))
    ctx.body = {"model": "m", "temperature": 0, "messages": [{"role": "user", "content": question}]}
    ctx.alias = catalog.aliases["m"]
    ctx.deployments = ctx.alias.deployments
    return ctx


_STAGE_CATALOG = build_catalog(PolicyBundle(
    models=ModelsFile.model_validate({"aliases": {"m": {"deployments": [
        {"provider": "openai", "base_url": "http://127.0.0.1:9/v1", "model": "gpt-4o-mini"}]}}}),
    teams=TeamsFile.model_validate({"teams": {"alpha": {"cache": {"enabled": True}}}}),
))


async def test_a_stuck_leader_does_not_hold_up_later_requests() -> None:
    stage = Cache(MemoryStore(10**6), CacheMetrics(Metrics(), "memory"), wait_s=0.05)
    release = asyncio.Event()
    calls = 0

    async def upstream(ctx: RequestContext) -> Reply:
        nonlocal calls
        calls += 1
        if calls == 1:
            await release.wait()  # the first caller's upstream hangs
        ctx.deployment = ctx.deployments[0]
        ctx.usage = Usage(3, 4)
        return JsonReply(200, b'{"choices": []}', None)

    leader = asyncio.create_task(stage(_stage_context(), upstream))
    await asyncio.sleep(0.01)
    waiter = _stage_context()
    await stage(waiter, upstream)  # waits 50 ms for the leader, then asks upstream itself
    assert waiter.cache_status == "MISS" and calls == 2
    later = _stage_context()
    loop = asyncio.get_running_loop()
    started = loop.time()
    await stage(later, upstream)  # answered from the waiter's entry, without waiting on the leader
    assert later.cache_status == "HIT" and loop.time() - started < 0.04
    assert later.usage == Usage(3, 4) and later.cost == 0 and later.saved_cost > 0
    release.set()
    await leader
    assert calls == 2


async def test_waiters_of_a_failed_leader_each_ask_upstream() -> None:
    stage = Cache(MemoryStore(10**6), CacheMetrics(Metrics(), "memory"), wait_s=5.0)
    calls = 0

    async def upstream(ctx: RequestContext) -> Reply:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.02)
        if calls == 1:
            raise UpstreamUnavailable("down")
        ctx.deployment = ctx.deployments[0]
        return JsonReply(200, b'{"choices": []}', None)

    contexts = [_stage_context("same") for _ in range(5)]
    loop = asyncio.get_running_loop()
    started = loop.time()
    results = await asyncio.gather(*(stage(ctx, upstream) for ctx in contexts), return_exceptions=True)
    assert sum(isinstance(r, UpstreamUnavailable) for r in results) == 1
    assert calls == 5
    assert loop.time() - started < 2.5  # released when the leader failed, not after the 5 s wait
    assert not stage._flights
