"""A cost report as CSV, JSON or a terminal table.

CSV carries money as exact decimal strings with nine places (the ledger's nano-USD), so a
spreadsheet's column sum equals the ledger total to the nano-dollar; it has no totals row,
so summing a column never counts anything twice. JSON carries both the exact integer
``*_nanos`` and a convenient float ``*_usd``.
"""

from __future__ import annotations

import csv
import io
from datetime import date
from typing import Any, Final

import orjson
from rich.table import Table

from gateway.pricing import NANOS_PER_USD
from gateway.reports.costs import CostLine, CostReport, Period

NUMBER_COLUMNS: Final = ("requests", "prompt_tokens", "completion_tokens", "cost_usd", "saved_usd")
# Spreadsheets run cells starting with these as formulas; a team or prompt name must stay text.
_FORMULA_START: Final = ("=", "+", "-", "@", "\t", "\r")


def exact_usd(nanos: int) -> str:
    """Integer nano-USD as an exact decimal string: 1500 → ``"0.000001500"``."""
    sign = "-" if nanos < 0 else ""
    whole, frac = divmod(abs(nanos), NANOS_PER_USD)
    return f"{sign}{whole}.{frac:09d}"


def money(nanos: int) -> str:
    """For people: cents from a dollar up; more places below, where token prices live."""
    usd = nanos / NANOS_PER_USD
    if abs(usd) >= 1 or nanos == 0:
        return f"${usd:,.2f}"
    if abs(usd) >= 0.01:
        return f"${usd:.4f}"
    if abs(nanos) < 500:
        return "<$0.000001"  # not zero: something was spent
    return f"${usd:.6f}"


def _text(value: Any) -> str:
    if value is None:
        return ""
    text = str(value)
    return "'" + text if text.startswith(_FORMULA_START) else text


def to_csv(report: CostReport) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([*report.by, *NUMBER_COLUMNS])
    for line in report.lines:
        writer.writerow(
            [
                *(_text(line.group[name]) for name in report.by),
                line.requests,
                line.prompt_tokens,
                line.completion_tokens,
                exact_usd(line.cost_nanos),
                exact_usd(line.saved_nanos),
            ]
        )
    return out.getvalue()


def _line_json(line: CostLine) -> dict[str, Any]:
    return {
        **line.group,
        "requests": line.requests,
        "prompt_tokens": line.prompt_tokens,
        "completion_tokens": line.completion_tokens,
        "cost_nanos": line.cost_nanos,
        "cost_usd": line.cost_usd,
        "saved_nanos": line.saved_nanos,
        "saved_usd": line.saved_usd,
    }


def to_json_dict(report: CostReport) -> dict[str, Any]:
    return {
        "from": report.period.start.isoformat(),
        "to": report.period.end.isoformat(),
        "by": list(report.by),
        "filters": report.filters,
        "rows": [_line_json(line) for line in report.lines],
        "totals": _line_json(report.totals),
    }


_METRICS = frozenset({"requests", "prompt_tokens", "completion_tokens", "cost_nanos", "cost_usd", "saved_nanos",
                      "saved_usd"})


def from_json_dict(data: dict[str, Any]) -> CostReport:
    """The report back from ``to_json_dict`` (the admin API's JSON), for the remote CLI."""

    def line(row: dict[str, Any]) -> CostLine:
        return CostLine(group={k: v for k, v in row.items() if k not in _METRICS}, requests=row["requests"],
                        prompt_tokens=row["prompt_tokens"], completion_tokens=row["completion_tokens"],
                        cost_nanos=row["cost_nanos"], saved_nanos=row["saved_nanos"])

    return CostReport(period=Period(date.fromisoformat(data["from"]), date.fromisoformat(data["to"])),
                      by=tuple(data["by"]), lines=[line(row) for row in data["rows"]], totals=line(data["totals"]),
                      filters=dict(data["filters"]))


def to_json(report: CostReport) -> bytes:
    return orjson.dumps(to_json_dict(report), option=orjson.OPT_INDENT_2)


def to_table(report: CostReport) -> Table:
    title = f"Costs {report.period.start} to {report.period.end} (UTC, end exclusive)"
    if report.filters:
        title += " — " + ", ".join(f"{k}={v}" for k, v in report.filters.items())
    table = Table(title=title, show_footer=True)
    totals = report.totals
    for index, name in enumerate(report.by):
        table.add_column(name, footer="total" if index == 0 else "")
    table.add_column("requests", justify="right", footer=f"{totals.requests:,}")
    table.add_column("tokens in", justify="right", footer=f"{totals.prompt_tokens:,}")
    table.add_column("tokens out", justify="right", footer=f"{totals.completion_tokens:,}")
    table.add_column("cost", justify="right", footer=money(totals.cost_nanos))
    table.add_column("cache saved", justify="right", footer=money(totals.saved_nanos))
    for line in report.lines:
        table.add_row(
            *("-" if line.group[name] is None else str(line.group[name]) for name in report.by),
            f"{line.requests:,}",
            f"{line.prompt_tokens:,}",
            f"{line.completion_tokens:,}",
            money(line.cost_nanos),
            money(line.saved_nanos),
        )
    return table
