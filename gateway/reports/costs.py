"""Cost queries over the ledger: spend, tokens and cache savings grouped by any dimensions.

A period is a pair of UTC calendar dates, ``from`` inclusive and ``to`` exclusive, so
consecutive periods (``--from 2025-01-01 --to 2025-02-01`` then ``--from 2025-02-01 ...``)
never count a row twice and never miss one. A row belongs to the day its request finished.

Money is summed in the database as integer nano-USD and converted only for display, so a
report's rows add up exactly to its totals and to the ledger.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any, Final, Literal

from sqlalchemy import ColumnElement, Select, func, select

from gateway.errors import InvalidRequest
from gateway.pricing import NANOS_PER_USD
from gateway.storage import Database
from gateway.storage.schema import ledger

#: Dimensions a report may group by, and the ledger column behind each ("day" is computed).
DIMENSIONS: Final[dict[str, str]] = {
    "team": "team",
    "alias": "alias",
    "model": "model",
    "deployment": "deployment",
    "prompt": "prompt_name",
    "day": "ts",
    "key": "key_id",
    "variant": "variant",
    "kind": "kind",
}
MAX_PERIOD_DAYS: Final = 3660


@dataclass(frozen=True, slots=True)
class Period:
    """UTC dates: ``start`` inclusive, ``end`` exclusive."""

    start: date
    end: date

    @classmethod
    def parse(cls, start: str | None, end: str | None, *, today: date | None = None) -> Period:
        """From ``YYYY-MM-DD`` strings; defaults: the current UTC month so far (to tomorrow)."""
        today = today or datetime.now(UTC).date()
        start_date = _parse_date(start, "from") if start else today.replace(day=1)
        end_date = _parse_date(end, "to") if end else today + timedelta(days=1)
        if end_date <= start_date:
            raise InvalidRequest("'to' must be after 'from' (from is inclusive, to is exclusive).", param="to")
        if (end_date - start_date).days > MAX_PERIOD_DAYS:
            raise InvalidRequest(f"A report covers at most {MAX_PERIOD_DAYS} days.", param="from")
        return cls(start_date, end_date)

    @classmethod
    def last_days(cls, days: int, *, today: date | None = None) -> Period:
        """The ``days`` days up to and including today (UTC)."""
        today = today or datetime.now(UTC).date()
        return cls(today - timedelta(days=days - 1), today + timedelta(days=1))

    @property
    def start_ts(self) -> datetime:
        return datetime(self.start.year, self.start.month, self.start.day, tzinfo=UTC)

    @property
    def end_ts(self) -> datetime:
        return datetime(self.end.year, self.end.month, self.end.day, tzinfo=UTC)

    def days(self) -> list[date]:
        return [self.start + timedelta(days=i) for i in range((self.end - self.start).days)]


def _parse_date(value: str, param: str) -> date:
    try:
        return date.fromisoformat(value.strip())
    except ValueError:
        raise InvalidRequest(f"'{param}' must be a date like 2025-01-31 (UTC).", param=param) from None


def parse_by(value: str | Sequence[str] | None) -> tuple[str, ...]:
    """``"team,day"`` → ``("team", "day")``, checked against ``DIMENSIONS``; duplicates removed."""
    if value is None:
        return ()
    parts = value.split(",") if isinstance(value, str) else [p for item in value for p in item.split(",")]
    names = tuple(dict.fromkeys(p.strip().lower() for p in parts if p.strip()))
    unknown = [name for name in names if name not in DIMENSIONS]
    if unknown:
        raise InvalidRequest(
            f"Unknown 'by' dimension(s): {', '.join(unknown)}; choose from {', '.join(DIMENSIONS)}.", param="by"
        )
    return names


@dataclass(frozen=True, slots=True)
class CostLine:
    """One group's sums. ``group`` maps each dimension to its value (``None``: not set)."""

    group: dict[str, str | int | None]
    requests: int
    prompt_tokens: int
    completion_tokens: int
    cost_nanos: int
    saved_nanos: int

    @property
    def cost_usd(self) -> float:
        return self.cost_nanos / NANOS_PER_USD

    @property
    def saved_usd(self) -> float:
        return self.saved_nanos / NANOS_PER_USD


@dataclass(frozen=True, slots=True)
class CostReport:
    period: Period
    by: tuple[str, ...]
    lines: list[CostLine]
    totals: CostLine
    filters: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class CostQuery:
    """What to report. ``order="cost"`` sorts by spend (largest first) instead of by group."""

    period: Period
    by: tuple[str, ...] = ("team",)
    team: str | None = None
    key: str | None = None
    order: Literal["group", "cost"] = "group"
    limit: int | None = None
    skip_empty: bool = False  # leave out groups whose dimension value is not set (e.g. no prompt)


def _dimension(name: str, dialect: str) -> ColumnElement[Any]:
    if name == "day":
        if dialect == "postgresql":
            # timestamptz → the UTC calendar date, whatever the session's time zone is.
            return func.to_char(func.timezone("UTC", ledger.c.ts), "YYYY-MM-DD")
        # SQLite stores the UTC timestamp as ISO text; its first ten characters are the date.
        return func.substr(ledger.c.ts, 1, 10)
    return ledger.c[DIMENSIONS[name]]


def _sums() -> list[ColumnElement[Any]]:
    return [
        func.count().label("requests"),
        func.coalesce(func.sum(ledger.c.prompt_tokens), 0).label("prompt_tokens"),
        func.coalesce(func.sum(ledger.c.completion_tokens), 0).label("completion_tokens"),
        func.coalesce(func.sum(ledger.c.cost_nanos), 0).label("cost_nanos"),
        func.coalesce(func.sum(ledger.c.saved_nanos), 0).label("saved_nanos"),
    ]


def _filtered(query: Select[Any], spec: CostQuery) -> Select[Any]:
    query = query.where(ledger.c.ts >= spec.period.start_ts, ledger.c.ts < spec.period.end_ts)
    if spec.team is not None:
        query = query.where(ledger.c.team == spec.team)
    if spec.key is not None:
        query = query.where(ledger.c.key_id == spec.key)
    return query


def _line(group: dict[str, str | int | None], row: Any) -> CostLine:
    # PostgreSQL sums BIGINT into NUMERIC (Decimal); int() keeps every figure an exact integer.
    return CostLine(
        group=group,
        requests=int(row.requests),
        prompt_tokens=int(row.prompt_tokens),
        completion_tokens=int(row.completion_tokens),
        cost_nanos=int(row.cost_nanos),
        saved_nanos=int(row.saved_nanos),
    )


async def cost_report(db: Database, spec: CostQuery) -> CostReport:
    """Run the grouped query and the totals (over the whole period, not just the lines shown)."""
    if spec.order not in ("group", "cost"):
        raise InvalidRequest("'order' must be 'group' or 'cost'.", param="order")
    dims = [_dimension(name, db.dialect).label(f"d{i}") for i, name in enumerate(spec.by)]
    grouped = _filtered(select(*dims, *_sums()), spec)
    if spec.skip_empty:
        grouped = grouped.where(*(dim.element.is_not(None) for dim in dims))
    if dims:
        grouped = grouped.group_by(*(dim.element for dim in dims))
        if spec.order == "cost":
            grouped = grouped.order_by(func.sum(ledger.c.cost_nanos).desc(), *(dim.element for dim in dims))
        else:
            grouped = grouped.order_by(*(dim.element for dim in dims))
    if spec.limit is not None:
        grouped = grouped.limit(spec.limit)
    totals_query = _filtered(select(*_sums()), spec)
    async with db.engine.connect() as conn:
        rows = (await conn.execute(grouped)).all() if dims else []
        totals_row = (await conn.execute(totals_query)).one()
    lines = [_line({name: row[i] for i, name in enumerate(spec.by)}, row) for row in rows]
    filters = {k: v for k, v in (("team", spec.team), ("key", spec.key)) if v is not None}
    return CostReport(spec.period, spec.by, lines, _line({}, totals_row), filters)
