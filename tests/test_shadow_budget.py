"""The team's shadow scope: its own limit, its own counter, rebuilt from shadow ledger rows
only, and never the team's (budget policy, ledger sums, the in-process backend)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import insert

from gateway.budgets.alerts import Alerts, BudgetMetrics
from gateway.budgets.backend import Refusal, Reservation
from gateway.budgets.ledger_io import spent_by_field
from gateway.budgets.memory_backend import MemoryBackend
from gateway.budgets.policy import TeamBudget, team_budget
from gateway.config.policies import BudgetSpec
from gateway.pricing import to_nanos
from gateway.storage import Database, open_database
from gateway.storage.schema import ledger


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
