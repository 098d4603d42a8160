"""What the finance page shows, gathered from the ledger and the budget feature.

Kept apart from the HTTP handler so the numbers can be checked without a browser: the page
is this data rendered by ``templates/reports.html``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from gateway.features import BudgetReporter
from gateway.reports.chart import Chart, build_chart
from gateway.reports.costs import CostLine, CostQuery, Period, cost_report
from gateway.storage import Database

log = logging.getLogger("gateway.reports")

TOP = 10


@dataclass(frozen=True, slots=True)
class Gauge:
    """One budget, as a bar: spent (solid) and reserved (hatched) against the limit."""

    label: str
    period: str
    mode: str  # hard | soft | "" when the budget feature does not say
    limit_usd: float
    spent_usd: float
    reserved_usd: float
    remaining_usd: float | None
    forecast_usd: float | None
    resets_at: str
    spent_pct: float  # of the limit, capped at 100 for drawing
    reserved_pct: float
    forecast_pct: float | None
    used_ratio: float  # (spent + reserved) / limit, uncapped, for the text and the colour
    level: str  # ok | warn | over


@dataclass
class Dashboard:
    period: Period
    totals: CostLine
    teams: list[CostLine]
    prompts: list[CostLine]
    models: list[CostLine]
    chart: Chart
    gauges: list[Gauge] = field(default_factory=list)
    budgets: str = "none"  # none (no budget feature) | ok | unavailable (the reporter failed)


def _number(status: dict[str, Any], *names: str) -> float | None:
    for name in names:
        value = status.get(name)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    return None


def _when(value: Any) -> str:
    """A reset time (datetime or ISO string) as ``YYYY-MM-DD HH:MM UTC``; other text as given."""
    moment: datetime
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            return value
    else:
        return ""
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC)
    return moment.strftime("%Y-%m-%d %H:%M UTC")


def gauge_of(status: dict[str, Any]) -> Gauge | None:
    """A budget status from ``BudgetReporter.statuses()`` as a gauge; ``None`` without a limit.

    Reads ``team``, an optional sub-budget (``scope``, ``key_id`` or ``alias``), ``period``,
    ``hard`` (or ``mode``), ``limit_usd``, ``spent_usd``, ``reserved_usd``, ``remaining_usd``,
    ``forecast_usd`` and ``resets_at``.
    """
    limit = _number(status, "limit_usd")
    if limit is None or limit <= 0:
        return None
    spent = _number(status, "spent_usd") or 0.0
    reserved = _number(status, "reserved_usd") or 0.0
    forecast = _number(status, "forecast_usd")
    label = str(status.get("team") or "?")
    scope = status.get("scope")
    if scope and scope != "team":
        label += f" · {scope}"
    elif status.get("key_id"):
        label += f" · key {status['key_id']}"
    elif status.get("alias"):
        label += f" · {status['alias']}"
    hard = status.get("hard")
    mode = str(status.get("mode") or ("hard" if hard is True else "soft" if hard is False else ""))
    resets_text = _when(status.get("resets_at"))
    used = (spent + reserved) / limit
    spent_pct = min(spent / limit * 100, 100.0)
    return Gauge(
        label=label,
        period=str(status.get("period") or ""),
        mode=mode,
        limit_usd=limit,
        spent_usd=spent,
        reserved_usd=reserved,
        remaining_usd=_number(status, "remaining_usd"),
        forecast_usd=forecast,
        resets_at=resets_text,
        spent_pct=round(spent_pct, 2),
        reserved_pct=round(min(reserved / limit * 100, 100.0 - spent_pct), 2),
        forecast_pct=round(min(forecast / limit * 100, 100.0), 2) if forecast is not None else None,
        used_ratio=used,
        level="over" if used >= 1 else "warn" if used >= 0.8 else "ok",
    )


async def build_dashboard(db: Database, period: Period, reporter: BudgetReporter | None) -> Dashboard:
    daily = await cost_report(db, CostQuery(period, by=("day", "team")))
    teams = await cost_report(db, CostQuery(period, by=("team",), order="cost"))
    prompts = await cost_report(db, CostQuery(period, by=("prompt",), order="cost", limit=TOP, skip_empty=True))
    models = await cost_report(db, CostQuery(period, by=("alias", "model"), order="cost", limit=TOP, skip_empty=True))
    dashboard = Dashboard(
        period=period,
        totals=daily.totals,
        teams=teams.lines,
        prompts=prompts.lines,
        models=models.lines,
        chart=build_chart(daily.lines, period.days()),
    )
    if reporter is not None:
        try:
            statuses = await reporter.statuses()
        except Exception:
            # Budget state lives in Redis; the spend report must still render when it is away.
            log.exception("budget status unavailable for the finance page")
            dashboard.budgets = "unavailable"
        else:
            dashboard.budgets = "ok"
            dashboard.gauges = [g for g in (gauge_of(s) for s in statuses) if g is not None]
    return dashboard
