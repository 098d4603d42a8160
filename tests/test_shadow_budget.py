"""The team's shadow scope: its own limit, its own counter, rebuilt from shadow ledger rows
only, and never the team's (budget policy, ledger sums, the in-process and Redis backends)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import redis
from sqlalchemy import insert

from gateway.budgets.alerts import Alerts, BudgetMetrics
from gateway.budgets.backend import Refusal, Reservation
from gateway.budgets.ledger_io import spent_by_field
from gateway.budgets.memory_backend import MemoryBackend
from gateway.budgets.policy import TeamBudget, team_budget
from gateway.budgets.redis_backend import RedisBackend
from gateway.config.policies import BudgetSpec
from gateway.config.settings import BudgetSettings
from gateway.pricing import to_nanos
from gateway.redis.wire import RedisWire
from gateway.storage import Database, open_database
from gateway.storage.schema import ledger
from support.budgets import counters, period_key


def budget(**spec: Any) -> TeamBudget:
    return team_budget("t", BudgetSpec(limit_usd=spec.pop("limit_usd", 10.0), period="daily", **spec))


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Database]:
    database = await open_database(f"sqlite:///{tmp_path / 'ledger.db'}")
    yield database
    await database.close()


def row(request_id: str, kind: str, usd: float, alias: str = "chat") -> dict[str, Any]:
    return {
        "ts": datetime.now(UTC),
        "request_id": request_id,
        "team": "t",
        "key_id": "key_1",
        "alias": alias,
        "kind": kind,
        "status": 200,
        "cost_nanos": to_nanos(usd),
    }


def test_the_shadow_scope_defaults_to_a_tenth_of_the_team_limit_and_is_always_hard() -> None:
    default = budget(hard=False)
    assert default.shadow_scope.limit_nanos == to_nanos(1.0) and default.shadow_scope.hard
    assert (default.shadow_scope.field, default.shadow_scope.label) == ("sh", "shadow")
    assert budget(shadow_limit_usd=0.25).shadow_scope.limit_nanos == to_nanos(0.25)
    assert default.shadow_scope not in default.scopes_for("key_1", "chat")
    assert default.shadow_scope in default.all_scopes()


async def test_ledger_sums_put_shadow_rows_in_the_shadow_scope_only(db: Database) -> None:
    spec = budget(aliases={"chat": {"limit_usd": 5.0}}, keys={"key_1": {"limit_usd": 5.0}})
    async with db.engine.begin() as conn:
        await conn.execute(
            insert(ledger),
            [row("a", "request", 0.5), row("b", "shadow", 0.25), row("c", "error", 0.125), row("d", "shadow", 0.125)],
        )
    spent = await spent_by_field(db, spec, spec.window())
    assert spent == {"t": to_nanos(0.625), "k:key_1": to_nanos(0.625), "a:chat": to_nanos(0.625), "sh": to_nanos(0.375)}


async def test_the_in_process_backend_keeps_shadow_spend_off_the_team_counter(db: Database) -> None:
    spec = budget(shadow_limit_usd=0.3)
    backend = MemoryBackend(db, Alerts(BudgetMetrics(None), webhook_timeout_s=1.0))
    shadow = (spec.shadow_scope,)
    held = await backend.reserve(spec, shadow, to_nanos(0.2), request_id="s1", key_id="key_1", alias="chat")
    assert isinstance(held, Reservation)
    # The shadow scope has 0.1 left: the next copy's worst case does not fit; the team's does.
    refused = await backend.reserve(spec, shadow, to_nanos(0.2), request_id="s2", key_id="key_1", alias="chat")
    assert isinstance(refused, Refusal) and refused.scope.kind == "shadow"
    team = await backend.reserve(
        spec, spec.scopes_for("key_1", "chat"), to_nanos(5.0), request_id="r1", key_id="key_1", alias="chat"
    )
    assert isinstance(team, Reservation)
    backend.settle(held, to_nanos(0.15))
    backend.settle(team, to_nanos(1.0))
    states = await backend.snapshot(spec, spec.window())
    assert states is not None
    assert (states["t"].spent, states["sh"].spent) == (to_nanos(1.0), to_nanos(0.15))
    assert (states["t"].reserved, states["sh"].reserved) == (0, 0)


class Rows:
    """Ledger rows the Redis backend writes for reconciled reservations (also inserted)."""

    def __init__(self, db: Database) -> None:
        self.rows: list[dict[str, Any]] = []
        self._db = db

    async def __call__(self, rows: list[dict[str, Any]]) -> None:
        self.rows.extend(rows)
        async with self._db.engine.begin() as conn:
            await conn.execute(insert(ledger), rows)


@pytest.mark.redis
async def test_a_dead_replicas_shadow_reservation_stays_in_the_shadow_scope(redis_url: str, db: Database) -> None:
    name = "sh-" + uuid.uuid4().hex[:8]
    spec = team_budget(name, BudgetSpec(limit_usd=10.0, period="daily"))
    rows = Rows(db)

    def backend(**writes: Any) -> RedisBackend:
        settings = BudgetSettings(rebuild_settle_s=0.0, reconcile_interval_s=0.2, reservation_ttl_s=1.0)
        return RedisBackend(
            RedisWire(redis_url, timeout_s=2.0),
            db,
            Alerts(BudgetMetrics(None), webhook_timeout_s=1),
            settings,
            budgets=lambda: [spec],
            write_rows=writes.get("rows", rows),
        )

    dying, survivor = backend(), backend()
    await survivor.start()
    worst = to_nanos(0.01)
    held = await dying.reserve(spec, (spec.shadow_scope,), worst, request_id="r-shadow-0", key_id="key_1", alias="chat")
    assert isinstance(held, Reservation)
    await dying._wire.close()  # the replica is gone: no heartbeat, no settle
    client = redis.Redis.from_url(redis_url)
    try:
        for _ in range(100):
            if rows.rows:
                break
            await asyncio.sleep(0.05)
        [row] = rows.rows
        assert (row["kind"], row["cost_nanos"], row["request_id"]) == ("shadow", worst, "r-shadow-0")
        assert counters(client, name, shadow=True) == {"s:t": 0, "r:t": 0, "s:sh": worst, "r:sh": 0}
        # Rebuilt from the ledger after a data loss: the row still counts in the shadow scope only.
        client.delete(period_key(name))
        again = await survivor.reserve(
            spec, spec.scopes_for("key_1", "chat"), 1, request_id="next", key_id="key_1", alias="chat"
        )
        assert isinstance(again, Reservation)
        assert counters(client, name, shadow=True) == {"s:t": 0, "r:t": 1, "s:sh": worst}
    finally:
        await survivor.close()
