"""Budget policy → runtime objects: who may spend how much, and in which calendar period.

``teams.yaml`` says it in USD; here it becomes integer nano-USD (``gateway.pricing.to_nanos``,
the rounding the ledger uses too) and a set of *scopes*: the team's own budget plus the per-key
and per-alias sub-budgets inside it. A request is admitted only if every scope that applies to
it has room, and its spend is charged to all of them.

Shadow copies (``gateway.shadow``) are charged to one scope of their own, the team's *shadow
scope* (``shadow_limit_usd``, default 10 % of the team's limit, always hard), and to nothing
else: shadow spend never counts against the team's budget, and the team's spend never leaves
its shadows without room. In the ledger, shadow rows are told apart by ``kind = shadow``.

Periods are calendar periods in UTC: a day from 00:00, an ISO week from Monday 00:00, a month
from the 1st. The period a spend belongs to is decided by when it is committed (the request's
end), the same instant the ledger stamps its row with, so budgets and reports agree.
"""

from __future__ import annotations

import time
import weakref
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Literal

from gateway.pricing import from_nanos, to_nanos

if TYPE_CHECKING:
    from gateway.catalog import Catalog
    from gateway.config.policies import BudgetSpec

Period = Literal["daily", "weekly", "monthly"]
ScopeKind = Literal["team", "key", "alias", "shadow"]

#: The counter field of a team's shadow scope; ledger rows of this kind are summed into it only.
SHADOW_FIELD = "sh"
SHADOW_KIND = "shadow"
#: The shadow scope's limit when ``shadow_limit_usd`` is not given: this share of the team's.
DEFAULT_SHADOW_SHARE = 0.10

#: Always alerted: the limit itself (for a hard budget: the first refusal of the period once
#: spend is near the limit, see ``REFUSAL_ALERTS_FROM_PCT``).
EXHAUSTED_PCT = 100.0

#: A hard budget's refusal raises the 100 % alert only when *settled* spend is at least this
#: share of the limit. Alerts follow spend: a hard budget never lets spend reach 100 % (the next
#: request's worst case does not fit first), so the first refusal near the limit is the moment
#: it is exhausted; but one absurd request (``max_tokens`` in the millions) refused on a team at
#: 0.001 % of its budget says nothing about the budget and must not page anyone.
REFUSAL_ALERTS_FROM_PCT = 95


def refusal_exhausts(spent_nanos: int, limit_nanos: int) -> bool:
    """Whether a refusal with ``spent_nanos`` settled counts as the budget being exhausted."""
    return spent_nanos * 100 >= limit_nanos * REFUSAL_ALERTS_FROM_PCT


@dataclass(frozen=True, slots=True)
class Window:
    """One calendar period: ``[start, end)`` in UTC, and its label in storage keys."""

    period: Period
    start: datetime
    end: datetime
    label: str = field(init=False)  # "daily:2025-06-01"
    end_ts: float = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "label", f"{self.period}:{self.start.date().isoformat()}")
        object.__setattr__(self, "end_ts", self.end.timestamp())

    @property
    def resets_at(self) -> str:
        return self.end.isoformat().replace("+00:00", "Z")

    def seconds_left(self, now: datetime) -> int:
        return max(1, int((self.end - now).total_seconds() + 0.999))

    def contains(self, moment: datetime) -> bool:
        return self.start <= moment < self.end


# The current window per period: every request asks, and it changes once a day at most.
_current: dict[str, tuple[float, Window]] = {}


def window(period: Period, now: datetime | None = None) -> Window:
    """The calendar period containing ``now`` (default: this instant), in UTC."""
    if now is None:
        instant = time.time()
        cached = _current.get(period)
        if cached is not None and cached[0] <= instant < cached[1].end_ts:
            return cached[1]
        found = _window(period, datetime.fromtimestamp(instant, UTC))
        _current[period] = (found.start.timestamp(), found)
        return found
    return _window(period, now)


def _window(period: Period, now: datetime) -> Window:
    day = datetime(now.year, now.month, now.day, tzinfo=UTC)
    if period == "daily":
        return Window(period, day, day + timedelta(days=1))
    if period == "weekly":
        start = day - timedelta(days=now.weekday())
        return Window(period, start, start + timedelta(days=7))
    start = datetime(now.year, now.month, 1, tzinfo=UTC)
    end = datetime(now.year + 1, 1, 1, tzinfo=UTC) if now.month == 12 else datetime(now.year, now.month + 1, 1,
                                                                                      tzinfo=UTC)
    return Window(period, start, end)


@dataclass(frozen=True, slots=True)
class Scope:
    """One limit a request is checked against. ``field`` names its counters in storage."""

    kind: ScopeKind
    name: str
    limit_nanos: int
    hard: bool

    @property
    def field(self) -> str:
        if self.kind == "team":
            return "t"
        return SHADOW_FIELD if self.kind == "shadow" else f"{self.kind[0]}:{self.name}"

    @property
    def label(self) -> str:
        return self.kind if self.kind in ("team", "shadow") else f"{self.kind}:{self.name}"

    @property
    def limit_usd(self) -> float:
        return from_nanos(self.limit_nanos)


@dataclass(frozen=True, slots=True)
class TeamBudget:
    team: str
    period: Period
    team_scope: Scope
    thresholds: tuple[float, ...]  # percentages, ascending, ending with 100
    webhook_url: str | None
    shadow_scope: Scope  # what the team's shadow copies may spend (charged nowhere else)
    keys: dict[str, Scope] = field(default_factory=dict)
    aliases: dict[str, Scope] = field(default_factory=dict)

    @property
    def hard(self) -> bool:
        return self.team_scope.hard

    def scopes_for(self, key_id: str | None, alias: str | None) -> tuple[Scope, ...]:
        """The team scope first, then the key's and the alias' sub-budgets when they exist."""
        scopes = [self.team_scope]
        if key_id is not None and (found := self.keys.get(key_id)) is not None:
            scopes.append(found)
        if alias is not None and (found := self.aliases.get(alias)) is not None:
            scopes.append(found)
        return tuple(scopes)

    def all_scopes(self) -> tuple[Scope, ...]:
        return (self.team_scope, *self.keys.values(), *self.aliases.values(), self.shadow_scope)

    def window(self, now: datetime | None = None) -> Window:
        return window(self.period, now)


def team_budget(team: str, spec: BudgetSpec) -> TeamBudget:
    thresholds = tuple(sorted({*spec.alert_thresholds, EXHAUSTED_PCT}))

    def sub(kind: ScopeKind, name: str, limit_usd: float, hard: bool | None) -> Scope:
        return Scope(kind, name, to_nanos(limit_usd), spec.hard if hard is None else hard)

    shadow_usd = spec.shadow_limit_usd if spec.shadow_limit_usd is not None else spec.limit_usd * DEFAULT_SHADOW_SHARE
    return TeamBudget(
        team=team,
        period=spec.period,
        team_scope=Scope("team", team, to_nanos(spec.limit_usd), spec.hard),
        thresholds=thresholds,
        webhook_url=spec.webhook_url or None,
        shadow_scope=Scope("shadow", team, to_nanos(shadow_usd), True),
        keys={key: sub("key", key, s.limit_usd, s.hard) for key, s in spec.keys.items()},
        aliases={alias: sub("alias", alias, s.limit_usd, s.hard) for alias, s in spec.aliases.items()},
    )


class BudgetBook:
    """The budgets of a catalog, built once per policy load and looked up per request."""

    def __init__(self) -> None:
        # The last catalog seen, held weakly: a reload builds a new catalog, requests that
        # started before it keep theirs, and either is found by identity in one comparison.
        self._recent: list[tuple[weakref.ref[Catalog], dict[str, TeamBudget]]] = []

    def budgets(self, catalog: Catalog) -> dict[str, TeamBudget]:
        for ref, book in self._recent:
            if ref() is catalog:
                return book
        book = {
            name: team_budget(name, team.spec.budget)
            for name, team in catalog.teams.items()
            if team.spec.budget is not None
        }
        self._recent = [(weakref.ref(catalog), book), *self._recent[:1]]
        return book

    def for_team(self, catalog: Catalog, team: str) -> TeamBudget | None:
        return self.budgets(catalog).get(team)
