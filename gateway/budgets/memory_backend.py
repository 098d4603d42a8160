"""Budget counters in process, for a gateway without Redis (one replica, one worker).

The semantics are the Redis backend's: admission is atomic because the check and the
reservation run without an ``await`` between them on the one event loop; counters start from
the ledger's sum for the period; thresholds alert once per period. What differs is lifetime:
the counters live and die with the process. Its reservations cannot outlive it (a request's
finisher always runs while the process does), and after a restart the counters are rebuilt
from the ledger, which a graceful stop flushes first. Several workers or replicas without
Redis would each enforce the whole limit on their own: configure ``redis.url`` for those.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from gateway.budgets.alerts import Alerts, crossings
from gateway.budgets.backend import BudgetUnavailable, Refusal, Reservation, ScopeState
from gateway.budgets.ledger_io import request_ids_present, spent_by_field
from gateway.budgets.policy import EXHAUSTED_PCT, Scope, TeamBudget, Window, refusal_exhausts
from gateway.storage import Database

_KEEP_ENDED = timedelta(days=1)  # how long a finished period's counters stay for late commits


@dataclass(slots=True)
class _Pending:
    request_id: str
    cost: int
    fields: tuple[str, ...]


@dataclass(slots=True)
class _Period:
    window: Window
    fields: set[str] = field(default_factory=set)  # counters built from the ledger
    spent: dict[str, int] = field(default_factory=dict)
    reserved: dict[str, int] = field(default_factory=dict)
    alerted: set[tuple[str, float]] = field(default_factory=set)


class MemoryBackend:
    name = "memory"

    def __init__(
        self,
        db: Database,
        alerts: Alerts,
        *,
        flush_ledger: Callable[[], Awaitable[None]] | None = None,
        rebuild_wait_s: float = 10.0,
    ) -> None:
        self._db = db
        self._alerts = alerts
        self._flush_ledger = flush_ledger
        self._rebuild_wait = rebuild_wait_s
        self._periods: dict[tuple[str, str], _Period] = {}
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}
        # Spend settled while its period's counters were being built: added once they are.
        self._pending: dict[tuple[str, str], list[_Pending]] = {}

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def reserve(
        self,
        budget: TeamBudget,
        scopes: tuple[Scope, ...],
        amount: int,
        *,
        request_id: str,
        key_id: str | None,
        alias: str | None,
    ) -> Reservation | Refusal:
        window = budget.window()
        period = self._periods.get((budget.team, window.label))
        if period is None or not all(scope.field in period.fields for scope in scopes):
            period = await self._build(budget, window)
        # From here to the end: no await, so no other request can slip in between.
        for scope in scopes:
            if not scope.hard:
                continue
            spent = period.spent.get(scope.field, 0)
            reserved = period.reserved.get(scope.field, 0)
            if spent + reserved + amount > scope.limit_nanos:
                self._alerts.metrics.saw_spend(budget.team, scope, window, spent)
                if refusal_exhausts(spent, scope.limit_nanos) and self._claim(period, scope.field, EXHAUSTED_PCT):
                    self._alerts.fire(budget, scope, EXHAUSTED_PCT, spent, window)
                return Refusal(scope, spent, reserved, window)
        for scope in scopes:
            period.reserved[scope.field] = period.reserved.get(scope.field, 0) + amount
        return Reservation(
            rid=secrets.token_hex(8), budget=budget, window=window, scopes=scopes, amount=amount,
            request_id=request_id, key_id=key_id, alias=alias,
        )

    def settle(self, reservation: Reservation, cost_nanos: int) -> None:
        if reservation.settled:
            return
        reservation.settled = True
        held = self._periods.get((reservation.budget.team, reservation.window.label))
        if held is not None:
            for scope in reservation.scopes:
                held.reserved[scope.field] = held.reserved.get(scope.field, 0) - reservation.amount
        self._charge(reservation.budget, reservation.scopes, cost_nanos, reservation.request_id)

    def charge(self, budget: TeamBudget, scopes: tuple[Scope, ...], cost_nanos: int, *, request_id: str) -> None:
        self._charge(budget, scopes, cost_nanos, request_id)

    def _charge(self, budget: TeamBudget, scopes: tuple[Scope, ...], cost: int, request_id: str) -> None:
        if cost <= 0:
            return
        # Spend belongs to the period in which it is committed, as in the ledger.
        window = budget.window()
        key = (budget.team, window.label)
        period = self._periods.get(key)
        built = period.fields if period is not None else set()
        unbuilt = tuple(scope.field for scope in scopes if scope.field not in built)
        if unbuilt:
            self._pending.setdefault(key, []).append(_Pending(request_id, cost, unbuilt))
        if period is None:
            return
        for scope in scopes:
            if scope.field not in built:
                continue
            before = period.spent.get(scope.field, 0)
            after = before + cost
            period.spent[scope.field] = after
            self._alerts.metrics.saw_spend(budget.team, scope, window, after)
            for pct in crossings(scope.limit_nanos, budget.thresholds, before, after):
                if self._claim(period, scope.field, pct):
                    self._alerts.fire(budget, scope, pct, after, window)

    @staticmethod
    def _claim(period: _Period, field_name: str, pct: float) -> bool:
        if (field_name, pct) in period.alerted:
            return False
        period.alerted.add((field_name, pct))
        return True

    async def _build(self, budget: TeamBudget, window: Window) -> _Period:
        """Counters for this period from the ledger (once; concurrent callers wait for it)."""
        key = (budget.team, window.label)
        lock = self._locks.setdefault(key, asyncio.Lock())
        try:
            async with asyncio.timeout(self._rebuild_wait):
                async with lock:
                    return await self._build_locked(budget, window, key)
        except TimeoutError:
            raise BudgetUnavailable("rebuilding the budget counters from the ledger timed out") from None
        except BudgetUnavailable:
            raise
        except Exception as exc:
            raise BudgetUnavailable(f"cannot read the ledger to rebuild budgets: {type(exc).__name__}") from exc

    async def _build_locked(self, budget: TeamBudget, window: Window, key: tuple[str, str]) -> _Period:
        wanted = {scope.field for scope in budget.all_scopes()}
        period = self._periods.get(key)
        if period is not None and wanted <= period.fields:
            return period
        if self._flush_ledger is not None:
            await self._flush_ledger()  # this process' rows still queued must be in the sum
        spent = await spent_by_field(self._db, budget, window)
        while True:
            pending = list(self._pending.get(key, ()))
            present = await request_ids_present(self._db, budget.team, window, (p.request_id for p in pending))
            if len(self._pending.get(key, ())) == len(pending):
                break  # nothing settled while the ledger was read: the list is complete
        # No await from here on: the counters appear complete or not at all.
        self._prune()
        period = self._periods.get(key)
        if period is None:
            period = _Period(window)
            self._periods[key] = period
        missing = wanted - period.fields
        for field_name in missing:
            period.spent[field_name] = spent.get(field_name, 0)
        for item in self._pending.pop(key, ()):
            if item.request_id in present:
                continue  # already in the ledger's sum
            for field_name in item.fields:
                if field_name in missing:
                    period.spent[field_name] = period.spent.get(field_name, 0) + item.cost
        period.fields |= missing
        for scope in budget.all_scopes():
            if scope.field in missing:
                self._alerts.metrics.saw_spend(budget.team, scope, window, period.spent[scope.field])
        return period

    def _prune(self) -> None:
        now = datetime.now(UTC)
        for key, period in list(self._periods.items()):
            if period.window.end + _KEEP_ENDED < now:
                del self._periods[key]
                self._locks.pop(key, None)

    async def snapshot(self, budget: TeamBudget, window: Window) -> dict[str, ScopeState] | None:
        period = self._periods.get((budget.team, window.label))
        if period is None:
            return None
        return {
            field_name: ScopeState(period.spent.get(field_name, 0), max(period.reserved.get(field_name, 0), 0))
            for field_name in period.fields
        }
