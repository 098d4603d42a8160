"""Budgets through real gateway processes: no overspend across replicas, dead replicas
reconciled, Redis data loss rebuilt from the ledger, fail-closed/open, alerts, status."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import httpx
import openai
import orjson
import pytest
import redis
from conftest import FakeHandle, make_gateway
from openai import AsyncOpenAI
from sqlalchemy import func, select

from gateway.pricing import to_nanos
from gateway.storage import open_database
from gateway.storage.schema import ledger
from support.budgets import WORST, WebhookReceiver, counters, priced_models
from support.gateway_proc import ADMIN_KEY, GatewayProcess
from support.ledger import wait_for_rows
from support.redis_server import RedisServer

pytestmark = [pytest.mark.redis, pytest.mark.slow]

# The fake echoes the message: 77 tokens plus "Mock answer:" is 80 completion tokens, $0.008
# at $1e-4 per output token, below the $0.01 reserved for max_tokens=100.
MESSAGES = [{"role": "user", "content": "x " * 77}]
ACTUAL = to_nanos(0.008)
FAST_BUDGETS = {"reservation_ttl_s": 2.0, "reconcile_interval_s": 0.3, "rebuild_settle_s": 0.3, "timeout_ms": 2000}


def _team() -> str:
    return "team-" + uuid.uuid4().hex[:8]


def _teams(team: str, **budget: Any) -> dict[str, Any]:
    spec = {"limit_usd": 1.0, "period": "daily", "hard": True, **budget}
    return {"teams": {team: {"models": ["*"], "budget": spec}}}


def _gateway(root: Path, fake: FakeHandle, database_url: str, redis_url: str, teams: dict[str, Any],
             **extra: Any) -> GatewayProcess:
    root.mkdir(parents=True, exist_ok=True)
    return make_gateway(root, fake.url, database_url, redis_url=redis_url, models=priced_models(f"{fake.url}/v1"),
                        teams=teams, extra={"budgets": FAST_BUDGETS, **extra})


async def _start(*procs: GatewayProcess) -> None:
    """Start gateways side by side (each start is mostly waiting for imports and migrations)."""
    await asyncio.gather(*(asyncio.to_thread(proc.start, 60) for proc in procs))


def _key(proc: GatewayProcess, team: str, *roles: str) -> str:
    response = httpx.post(f"{proc.url}/admin/keys", json={"team": team, "roles": list(roles or ["app"])},
                          headers={"authorization": f"Bearer {ADMIN_KEY}"}, timeout=30)
    response.raise_for_status()
    return str(response.json()["key"])


def _client(proc: GatewayProcess, key: str) -> AsyncOpenAI:
    return AsyncOpenAI(base_url=f"{proc.url}/v1", api_key=key, max_retries=0, timeout=60)


async def _ledger_sum(database_url: str, team: str) -> int:
    db = await open_database(database_url, run_migrations=False)
    try:
        async with db.engine.connect() as conn:
            total = await conn.scalar(select(func.coalesce(func.sum(ledger.c.cost_nanos), 0))
                                      .where(ledger.c.team == team))
    finally:
        await db.close()
    return int(total or 0)


async def _settled(client: redis.Redis, team: str, seconds: float = 15.0) -> dict[str, int]:
    """Counters once every reservation is released (settlements are sent in the background)."""
    for _ in range(int(seconds / 0.05)):
        found = counters(client, team)
        if found.get("r:t", 0) == 0:
            return found
        await asyncio.sleep(0.05)
    return counters(client, team)


async def test_three_replicas_never_overspend_and_the_ledger_matches(
    tmp_path: Path, fake: FakeHandle, pg_url: str, redis_url: str
) -> None:
    rclient = redis.Redis.from_url(redis_url)
    rclient.flushdb()
    team = _team()
    procs = [_gateway(tmp_path / f"gw{i}", fake, pg_url, redis_url, _teams(team)) for i in range(3)]
    try:
        await _start(*procs)
        key = _key(procs[0], team)
        clients = [_client(proc, key) for proc in procs]

        async def one(index: int) -> str:
            try:
                answer = await clients[index % 3].chat.completions.create(
                    model="priced", messages=MESSAGES, max_tokens=100,  # type: ignore[arg-type]
                    extra_headers={"x-request-id": f"{team}-{index}"},
                )
            except openai.RateLimitError as exc:
                body = exc.body if isinstance(exc.body, dict) else {}
                assert body.get("code") == "budget_exceeded", body
                assert body["team"] == team and body["limit_usd"] == 1.0 and body["period"] == "daily"
                assert exc.response.headers["retry-after"].isdigit()
                return "refused"
            assert answer.usage is not None and answer.usage.completion_tokens == 80
            return "answered"

        outcomes = await asyncio.gather(*(one(i) for i in range(300)))
        answered = outcomes.count("answered")
        assert outcomes.count("refused") == 300 - answered
        assert 100 <= answered <= 124  # 100 fit at the worst case; at most 124 at the actual cost

        spent = (await _settled(rclient, team))["s:t"]
        assert spent == answered * ACTUAL <= to_nanos(1.0)
        rows = await wait_for_rows(pg_url, ledger.c.team == team, until=lambda rows: len(rows) == 300)
        assert len(rows) == 300
        refused = [row for row in rows if row["kind"] == "rejected"]
        assert len(refused) == 300 - answered
        assert all(row["cost_nanos"] == 0 and row["status"] == 429 for row in refused)
        assert sum(row["cost_nanos"] for row in rows) == spent == await _ledger_sum(pg_url, team)
        for client in clients:
            await client.close()
    finally:
        for proc in procs:
            proc.stop()


async def test_a_replica_killed_mid_stream_is_reconciled_by_another(
    tmp_path: Path, fake: FakeHandle, pg_url: str, redis_url: str
) -> None:
    rclient = redis.Redis.from_url(redis_url)
    rclient.flushdb()
    team = _team()
    fake.configure(chunk_delay_ms=400, stream_chunks=20)
    doomed = _gateway(tmp_path / "doomed", fake, pg_url, redis_url, _teams(team))
    survivor = _gateway(tmp_path / "survivor", fake, pg_url, redis_url, _teams(team))
    try:
        await _start(doomed, survivor)
        key = _key(survivor, team)
        # One finished request first, so the ledger and the counters have something to agree on.
        await _client(survivor, key).chat.completions.create(model="priced", messages=MESSAGES, max_tokens=100)  # type: ignore[arg-type]
        assert await _settled(rclient, team) == {"s:t": ACTUAL, "r:t": 0}
        request_id = f"{team}-killed"
        async with httpx.AsyncClient(timeout=30) as http, http.stream(
            "POST", f"{doomed.url}/v1/chat/completions",
            headers={"authorization": f"Bearer {key}", "x-request-id": request_id},
            json={"model": "priced", "messages": MESSAGES, "max_tokens": 100, "stream": True},
        ) as response:
            assert response.status_code == 200
            async for _ in response.aiter_bytes():
                break  # the stream is running
            assert counters(rclient, team)["r:t"] == WORST
            doomed.kill()
        rows = await wait_for_rows(
            pg_url, ledger.c.request_id == request_id, until=lambda rows: len(rows) == 1, seconds=20
        )
        assert len(rows) == 1
        assert (rows[0]["kind"], rows[0]["cost_nanos"], rows[0]["team"]) == ("reconciled", WORST, team)
        state = await _settled(rclient, team)
        assert state == {"s:t": ACTUAL + WORST, "r:t": 0}
        assert await _ledger_sum(pg_url, team) == state["s:t"]
    finally:
        doomed.stop()
        survivor.stop()


async def test_spend_survives_redis_losing_its_data(tmp_path: Path, fake: FakeHandle) -> None:
    server = RedisServer().start()
    team, soft = _team(), _team()
    teams = {"teams": {**_teams(team, limit_usd=0.033)["teams"], **_teams(soft, limit_usd=0.033, hard=False)["teams"]}}
    database_url = f"sqlite:///{tmp_path / 'gateway.db'}"
    proc = _gateway(tmp_path / "gw", fake, database_url, server.url, teams)
    try:
        proc.start(timeout=40)
        client = _client(proc, _key(proc, team))
        soft_client = _client(proc, _key(proc, soft))

        async def ask(which: AsyncOpenAI = client) -> str:
            try:
                await which.chat.completions.create(model="priced", messages=MESSAGES, max_tokens=100)  # type: ignore[arg-type]
                # The answer goes out before its settlement reaches Redis; let it land so the
                # next request sees the spend rather than the held reservation.
                if server.is_up():
                    await _settled(server.client(), team if which is client else soft)
            except openai.RateLimitError as exc:
                assert isinstance(exc.body, dict) and exc.body["code"] == "budget_exceeded"
                return f"refused at {exc.body['spent_usd']:.3f}"
            except openai.InternalServerError as exc:
                assert isinstance(exc.body, dict)
                return f"{exc.status_code} {exc.body['code']}"
            return "answered"

        # $0.033: three answers ($0.024), then a fourth could reach $0.034: refused.
        assert [await ask() for _ in range(4)] == ["answered"] * 3 + ["refused at 0.024"]
        server.client().flushall()  # mid-period, Redis forgets everything
        assert await ask() == "refused at 0.024"  # rebuilt from the ledger, not from zero
        assert counters(server.client(), team) == {"s:t": 3 * ACTUAL, "r:t": 0}

        # Redis gone: the hard budget refuses to spend blind, the soft one admits and alerts.
        server.stop()
        assert await ask() == "503 budget_unavailable"
        assert await ask(soft_client) == "answered"
        # Back, empty (no persistence): both rebuilt from the ledger, the soft spend included.
        server.start()
        assert await ask() == "refused at 0.024"
        assert await ask(soft_client) == "answered"
        soft_state = await _settled(server.client(), soft)
        assert soft_state == {"s:t": 2 * ACTUAL, "r:t": 0}
        await wait_for_rows(database_url, ledger.c.team == soft, until=lambda rows: len(rows) == 2)
        assert await _ledger_sum(database_url, soft) == soft_state["s:t"]
        assert await _ledger_sum(database_url, team) == 3 * ACTUAL
        assert "budget counters unavailable" in proc.log()
        await client.close()
        await soft_client.close()
    finally:
        proc.stop()
        server.stop()


@pytest.mark.parametrize("backend", ["memory", "redis"])
async def test_alerts_fire_once_and_status_is_reported(
    backend: str, tmp_path: Path, fake: FakeHandle, redis_url: str
) -> None:
    hook = WebhookReceiver().start()
    team = _team()
    teams = _teams(team, limit_usd=0.02, hard=False, alert_thresholds=[50, 80], webhook_url=hook.url)
    if backend == "redis":
        redis.Redis.from_url(redis_url).flushdb()
    proc = _gateway(tmp_path, fake, f"sqlite:///{tmp_path / 'gateway.db'}",
                    redis_url if backend == "redis" else "", teams)
    try:
        proc.start(timeout=40)
        client = _client(proc, _key(proc, team))
        for _ in range(6):  # $0.008 each: 40%, 80%, 120% ... a soft budget keeps answering
            await client.chat.completions.create(model="priced", messages=MESSAGES, max_tokens=100)  # type: ignore[arg-type]
        alerts = await hook.wait_for(3)
        await asyncio.sleep(0.5)
        assert sorted(a["threshold_pct"] for a in hook.received) == [50.0, 80.0, 100.0]
        assert {a["team"] for a in alerts} == {team}
        async with httpx.AsyncClient(base_url=proc.url) as http:
            metrics = (await http.get("/metrics")).text
            finance = _key(proc, "finance-team", "finance")
            app_key = _key(proc, team)
            denied = await http.get("/admin/budgets", headers={"authorization": f"Bearer {app_key}"})
            response = await http.get("/admin/budgets", params={"team": team},
                                      headers={"authorization": f"Bearer {finance}"})
        assert f'gateway_budget_alerts_total{{scope="team",team="{team}",threshold="80"}} 1.0' in metrics
        assert denied.status_code == 403
        assert response.status_code == 200
        rows = {found["scope"]: found for found in response.json()}
        assert set(rows) == {"team", "shadow"}  # the team's shadow scope is listed beside it
        row = rows["team"]
        assert row["team"] == team and row["scope"] == "team" and row["hard"] is False
        assert row["spent_usd"] == pytest.approx(0.048) and row["limit_usd"] == 0.02
        assert row["remaining_usd"] == 0 and row["source"] == backend
        assert row["forecast_usd"] >= row["spent_usd"]

        await wait_for_rows(proc.config.database_url, ledger.c.team == team, until=lambda rows: len(rows) == 6)
        if backend == "redis":
            cli = orjson.loads(proc.cli("budgets", "status", "--team", team, "--format", "json").stdout)
            assert cli[0]["spent_usd"] == pytest.approx(0.048) and cli[0]["source"] == "redis"
        else:  # the counters live in the server's memory: the CLI sums the ledger
            table = proc.cli("budgets", "status").stdout
            assert team in table and "0.0480" in table and "ledger" in table
        await client.close()
    finally:
        proc.stop()
        hook.stop()


def test_admin_route_lists_every_budget(gateway: GatewayProcess) -> None:
    # The shared gateway has no budgets configured: an empty list, not an error.
    response = httpx.get(f"{gateway.url}/admin/budgets", headers={"authorization": f"Bearer {ADMIN_KEY}"})
    assert response.status_code == 200 and response.json() == []
