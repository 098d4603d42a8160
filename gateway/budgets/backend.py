"""The counter store behind budgets: one interface, a Redis and an in-process implementation.

A backend keeps, per team and calendar period, how much each scope has *spent* (committed)
and how much is *reserved* by requests in flight, and offers three operations:

* ``reserve`` — atomically admit a request only if, for every hard scope that applies to it,
  ``spent + reserved + worst_case <= limit``, and hold its worst case;
* ``settle`` — the request is over: release the reservation and charge what it actually
  cost (0 for a failure that never reached the model). It never blocks: the write happens in
  the background and is retried until it lands;
* ``charge`` — spend that bypassed a reservation (a soft budget admitted while the counters
  were unreachable), so the counters still end up equal to the ledger.

Counters that are missing — a new period, or data lost — are rebuilt from the ledger before
the next admission; a backend never admits against counters it has not rebuilt.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from gateway.budgets.policy import Scope, TeamBudget, Window


class BudgetUnavailable(Exception):
    """The counters cannot be read or rebuilt right now (Redis down, rebuild timed out)."""


@dataclass(slots=True)
class Reservation:
    """A request's held worst case; settled exactly once."""

    rid: str  # unique per reservation (request ids come from callers and may repeat)
    budget: TeamBudget
    window: Window  # the period the worst case is held in
    scopes: tuple[Scope, ...]
    amount: int  # nano-USD
    request_id: str
    key_id: str | None
    alias: str | None
    record: bytes = b""  # the backend's stored form, for heartbeats
    settled: bool = False


@dataclass(frozen=True, slots=True)
class Refusal:
    """A hard scope has no room: the request is refused and nothing was reserved."""

    scope: Scope
    spent: int
    reserved: int
    window: Window


@dataclass(frozen=True, slots=True)
class ScopeState:
    spent: int
    reserved: int


class BudgetBackend(Protocol):
    name: str

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
        """Admit or refuse atomically; raises :class:`BudgetUnavailable`."""
        ...

    def settle(self, reservation: Reservation, cost_nanos: int) -> None:
        """Release the reservation and charge ``cost_nanos`` (idempotent, non-blocking)."""
        ...

    def charge(
        self,
        budget: TeamBudget,
        scopes: tuple[Scope, ...],
        cost_nanos: int,
        *,
        request_id: str,
    ) -> None:
        """Charge spend that had no reservation (non-blocking)."""
        ...

    async def snapshot(self, budget: TeamBudget, window: Window) -> dict[str, ScopeState] | None:
        """Live counters per scope field, or ``None`` when they are not built (read the ledger)."""
        ...

    async def start(self) -> None: ...

    async def close(self) -> None: ...
