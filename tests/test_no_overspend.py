"""The no-overspend promise on every path a request can take, through running gateways.

A matrix: JSON, a stream without ``stream_options.include_usage`` and a stream with it; on the
``mock`` provider, the OpenAI-compatible fast path (the fake upstream) and litellm (an
Anthropic deployment pointed at the fake's Anthropic wire format); on both budget backends:
Redis with three replicas on one database, and the in-process counters with one replica (its
counters live in the process, so one replica is the configuration it promises anything for).

Every combination has its own team with a hard $0.10 budget and sends more requests at once
than fit. For each: nothing beyond the limit is spent, the budget's live counters equal the
ledger to the nano, spend is not zero, requests past the limit are refused with 429
``budget_exceeded``, and a caller that did not ask for usage in a stream never gets the usage
chunk. (Completed streams were once charged nothing at all: settlement ran before pricing.)
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import redis
from conftest import FakeHandle, make_gateway
from openai import AsyncOpenAI

from gateway.pricing import to_nanos
from gateway.storage.schema import ledger
from support.gateway_proc import ADMIN_KEY, GatewayProcess
from support.ledger import wait_for_rows

pytestmark = pytest.mark.slow

LIMIT_USD = 0.1
# A ~150-token prompt echoed back (capped at max_tokens=100) at $1e-4 a token: each answer
# costs ~$0.025 and reserves ~$0.026, so three to four fit and sixteen never do.
REQUESTS_PER_TEAM = 16
PRICE = {"input_cost_per_token": 1e-4, "output_cost_per_token": 1e-4, "max_output_tokens": 4096}
PROMPT = "budget " * 150
PROVIDERS = ("mock", "compat", "litellm")
MODES = ("json", "stream", "stream-usage")


def models(fake_url: str) -> dict[str, Any]:
    upstream = {"api_key": "${TEST_PROVIDER_KEY}", "timeout_s": 10, "retries": 0, **PRICE}
    return {
        "aliases": {
            "mock": {"deployments": [{"provider": "mock", "model": "mock-1", **PRICE}]},
            "compat": {"deployments": [{"provider": "openai", "model": "gpt-4o-mini",
                                        "base_url": f"{fake_url}/v1", **upstream}]},
            "litellm": {"deployments": [{"provider": "anthropic", "model": "claude-haiku-4-5",
                                         "base_url": fake_url, **upstream}]},
        }
    }


def team_name(provider: str, mode: str) -> str:
    return f"{provider}-{mode}"


def teams() -> dict[str, Any]:
    budget = {"limit_usd": LIMIT_USD, "period": "daily", "hard": True}
    return {
        "teams": {
            team_name(provider, mode): {"models": [provider], "budget": budget}
            for provider in PROVIDERS
            for mode in MODES
        }
    }


async def call(client: AsyncOpenAI, provider: str, mode: str) -> str:
    """One request; "answered" or "refused". Checks the usage chunk is sent only when asked for."""
    messages: Any = [{"role": "user", "content": PROMPT}]
    try:
        if mode == "json":
            answer = await client.chat.completions.create(model=provider, messages=messages, max_tokens=100)
            assert answer.usage is not None and answer.usage.completion_tokens > 0
            return "answered"
        extra: dict[str, Any] = {"stream_options": {"include_usage": True}} if mode == "stream-usage" else {}
        stream = await client.chat.completions.create(
            model=provider, messages=messages, max_tokens=100, stream=True, **extra
        )
        usage_chunks = 0
        text = ""
        async for chunk in stream:
            if chunk.usage is not None:
                usage_chunks += 1
            for choice in chunk.choices:
                text += choice.delta.content or ""
        assert text, "the stream carried an answer"
        assert usage_chunks == (1 if mode == "stream-usage" else 0)
        return "answered"
    except openai.RateLimitError as exc:
        body = exc.body if isinstance(exc.body, dict) else {}
        assert body.get("code") == "budget_exceeded", body
        return "refused"


def budget_status(proc: GatewayProcess) -> dict[str, dict[str, Any]]:
    response = httpx.get(f"{proc.url}/admin/budgets", headers={"authorization": f"Bearer {ADMIN_KEY}"}, timeout=30)
    response.raise_for_status()
    return {row["team"]: row for row in response.json() if row["scope"] == "team"}


async def settled(proc: GatewayProcess) -> dict[str, dict[str, Any]]:
    """The status once no reservation is held (Redis settlements are sent in the background)."""
    status: dict[str, dict[str, Any]] = {}
    for _ in range(300):
        status = await asyncio.to_thread(budget_status, proc)
        if all(row["reserved_usd"] == 0 for row in status.values()):
            return status
        await asyncio.sleep(0.05)
    return status


@pytest.fixture(params=["redis", "memory"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, str, str, int]:
    """(backend, Redis URL, database URL, replicas): Redis with three replicas on PostgreSQL,
    or the in-process counters with one replica on SQLite."""
    if request.param == "redis":
        redis_url = str(request.getfixturevalue("redis_url"))
        redis.Redis.from_url(redis_url).flushdb()
        return "redis", redis_url, str(request.getfixturevalue("fresh_pg_url")), 3
    return "memory", "", f"sqlite:///{tmp_path / 'gateway.db'}", 1


async def test_no_team_overspends_on_any_path(
    backend: tuple[str, str, str, int], tmp_path: Path, fake: FakeHandle
) -> None:
    kind, redis_url, database_url, replicas = backend
    extra = {"budgets": {"reservation_ttl_s": 30.0, "reconcile_interval_s": 0.3}}
    procs = [
        make_gateway(tmp_path / f"gw{i}", fake.url, database_url, redis_url=redis_url,
                     models=models(fake.url), teams=teams(), extra=extra)
        for i in range(replicas)
    ]
    for proc in procs:
        proc.config.root.mkdir(parents=True, exist_ok=True)
    try:
        await asyncio.gather(*(asyncio.to_thread(proc.start, 120) for proc in procs))
        combos = [(provider, mode) for provider in PROVIDERS for mode in MODES]
        keys = {combo: procs[0].create_key(team_name(*combo)) for combo in combos}
        clients = {
            (combo, i): AsyncOpenAI(base_url=f"{proc.url}/v1", api_key=keys[combo], max_retries=0, timeout=60)
            for combo in combos
            for i, proc in enumerate(procs)
        }
        calls = [
            call(clients[(combo, n % replicas)], *combo)
            for combo in combos
            for n in range(REQUESTS_PER_TEAM)
        ]
        outcomes = await asyncio.gather(*calls)
        status = await settled(procs[0])
        for index, combo in enumerate(combos):
            team = team_name(*combo)
            mine = outcomes[index * REQUESTS_PER_TEAM : (index + 1) * REQUESTS_PER_TEAM]
            answered = mine.count("answered")
            assert answered >= 3, (team, mine)  # three worst cases fit in the budget
            assert "refused" in mine, (team, mine)  # sixteen answers do not
            rows = await wait_for_rows(database_url, ledger.c.team == team,
                                       until=lambda rows: len(rows) == REQUESTS_PER_TEAM)
            assert len(rows) == REQUESTS_PER_TEAM, team
            assert sum(1 for row in rows if row["status"] == 200) == answered, team
            ledger_spent = sum(row["cost_nanos"] for row in rows)
            row = status[team]
            assert row["source"] == kind
            assert row["reserved_usd"] == 0, team
            assert ledger_spent > 0, team
            assert to_nanos(row["spent_usd"]) == ledger_spent, (team, row, ledger_spent)
            assert ledger_spent <= to_nanos(LIMIT_USD), team
        for client in clients.values():
            await client.close()
    finally:
        for proc in procs:
            proc.stop()
