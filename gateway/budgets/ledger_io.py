"""What the budget feature reads from and adds to the cost ledger.

The ledger is the durable truth of spend; the budget counters are a fast, atomic copy of it.
When the counters are lost (Redis flushed or restarted without persistence, a process restart
for the in-process backend) they are rebuilt from ``SUM(cost_nanos)`` over the period. When a
reservation is charged without its request ever finishing (the replica died), the budget
feature appends the ledger row the request never wrote, so ledger and counters still agree.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import func, select

from gateway.budgets.policy import SHADOW_KIND, TeamBudget, Window
from gateway.storage import Database
from gateway.storage.schema import ledger

#: ``ledger.kind`` of a row written for a reservation whose request died.
RECONCILED_KIND = "reconciled"
RECONCILED_CODE = "reservation_expired"


async def spent_by_field(
    db: Database, budget: TeamBudget, window: Window, *, before: datetime | None = None
) -> dict[str, int]:
    """Nano-USD spent in ``window`` (up to ``before``) per counter field: team, key and alias,
    and the shadow scope, which alone counts the rows of shadow copies (``kind = shadow``)."""
    end = window.end if before is None else min(window.end, before)
    shadow = (ledger.c.kind == SHADOW_KIND).label("shadow")
    query = (
        select(ledger.c.key_id, ledger.c.alias, shadow, func.coalesce(func.sum(ledger.c.cost_nanos), 0))
        .where(ledger.c.team == budget.team, ledger.c.ts >= window.start, ledger.c.ts < end)
        .group_by(ledger.c.key_id, ledger.c.alias, shadow)
    )
    async with db.engine.connect() as conn:
        rows = (await conn.execute(query)).all()
    spent = {scope.field: 0 for scope in budget.all_scopes()}
    for key_id, alias, is_shadow, total in rows:
        amount = int(total)
        if is_shadow:
            spent[budget.shadow_scope.field] += amount
            continue
        spent[budget.team_scope.field] += amount
        if key_id is not None and (scope := budget.keys.get(key_id)) is not None:
            spent[scope.field] += amount
        if alias is not None and (scope := budget.aliases.get(alias)) is not None:
            spent[scope.field] += amount
    return spent


async def request_ids_present(db: Database, team: str, window: Window, request_ids: Iterable[str]) -> set[str]:
    """Which of ``request_ids`` already have a row in the ledger for ``team`` and ``window``."""
    wanted = list(set(request_ids))
    found: set[str] = set()
    for start in range(0, len(wanted), 500):
        chunk = wanted[start : start + 500]
        query = select(ledger.c.request_id).where(
            ledger.c.team == team,
            ledger.c.request_id.in_(chunk),
            ledger.c.ts >= window.start,
            ledger.c.ts < window.end,
        )
        async with db.engine.connect() as conn:
            found.update((await conn.execute(query)).scalars())
    return found


def reconciled_row(
    *,
    team: str,
    request_id: str,
    key_id: str | None,
    alias: str | None,
    cost_nanos: int,
    window: Window,
    now: datetime | None = None,
    kind: str = RECONCILED_KIND,
) -> dict[str, Any]:
    """The ledger row for a dead request's reservation, charged at its worst case.

    ``kind`` is ``shadow`` for a shadow copy's reservation, so the row is summed into the
    team's shadow scope (where it was charged), not into its budget. Its time is clamped into
    the period the reservation was charged to, so the period's
    ledger sum and its counter match even when the reservation expires after midnight.
    """
    moment = now or datetime.now(UTC)
    if moment >= window.end:
        moment = window.end - timedelta(microseconds=1)
    return {
        "ts": moment,
        "request_id": request_id[:64],
        "team": team,
        "key_id": key_id,
        "user": None,
        "alias": alias,
        "deployment": None,
        "model": None,
        "prompt_name": None,
        "prompt_version": None,
        "variant": None,
        "kind": kind,
        "status": 0,  # no answer was ever known
        "prompt_tokens": 0,
        "completion_tokens": 0,
        "cost_nanos": cost_nanos,
        "saved_nanos": 0,
        "latency_ms": 0.0,
        "error_code": RECONCILED_CODE,
    }
