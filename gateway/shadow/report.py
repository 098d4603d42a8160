"""Agreement, latency and cost of one shadow rule against its primaries, from the stored
comparisons (``shadow_comparisons``): ``gateway shadow report`` and ``GET /admin/shadow/...``.

Copies that were never sent (sampled out, dropped, out of shadow budget, forbidden) have no
row: they are counted in ``gateway_shadow_copies_total`` only. The report reads at most
``MAX_ROWS`` rows (the newest); percentiles are nearest-rank over those.
"""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from sqlalchemy import select

from gateway.pricing import from_nanos
from gateway.storage import Database
from gateway.storage.schema import shadow_comparisons as table

MAX_ROWS: Final = 100_000
DEFAULT_SINCE: Final = timedelta(hours=24)
_DURATION = re.compile(r"^(\d+)([smhdw])$")
_UNITS: Final = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_since(value: str | None, now: datetime | None = None) -> datetime:
    """``24h``, ``30m``, ``7d``, ``2w`` back from now, or an ISO date/time (UTC if no offset).

    ``ValueError`` names what is wrong.
    """
    now = now or datetime.now(UTC)
    if not value:
        return now - DEFAULT_SINCE
    found = _DURATION.match(value.strip())
    if found:
        return now - timedelta(seconds=int(found.group(1)) * _UNITS[found.group(2)])
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"since: {value!r} is neither a duration (24h, 7d) nor an ISO date/time") from None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


async def shadow_report(db: Database, rule: str, since: datetime) -> dict[str, Any]:
    """The report for ``rule`` over the copies recorded since ``since``."""
    columns = [
        table.c[name]
        for name in (
            "outcome",
            "target",
            "exact_match",
            "length_ratio",
            "similarity",
            "json_valid",
            "schema_valid",
            "tools_match",
            "primary_latency_ms",
            "shadow_latency_ms",
            "primary_cost_nanos",
            "shadow_cost_nanos",
            "error_code",
        )
    ]
    query = (
        select(*columns).where(table.c.rule == rule, table.c.ts >= since).order_by(table.c.ts.desc()).limit(MAX_ROWS)
    )
    async with db.engine.connect() as conn:
        rows = [row._mapping for row in (await conn.execute(query)).all()]
    outcomes: dict[str, int] = {}
    errors: dict[str, int] = {}
    for row in rows:
        outcomes[row["outcome"]] = outcomes.get(row["outcome"], 0) + 1
        if row["error_code"]:
            errors[row["error_code"]] = errors.get(row["error_code"], 0) + 1
    compared = [row for row in rows if row["outcome"] == "completed"]
    similarity = sorted(float(row["similarity"]) for row in compared if row["similarity"] is not None)
    return {
        "rule": rule,
        "since": since.isoformat().replace("+00:00", "Z"),
        "targets": sorted({row["target"] for row in rows}),
        "copies": len(rows),
        "outcomes": dict(sorted(outcomes.items())),
        "error_codes": dict(sorted(errors.items())),
        "agreement": {
            "compared": len(compared),
            "exact_match_rate": _rate(compared, "exact_match"),
            "similarity_mean": _mean(similarity),
            "similarity_p50": _percentile(similarity, 50),
            "similarity_p10": _percentile(similarity, 10),
            "length_ratio_mean": _mean([float(r["length_ratio"]) for r in compared if r["length_ratio"] is not None]),
            "json_valid_rate": _rate(compared, "json_valid"),
            "schema_valid_rate": _rate(compared, "schema_valid"),
            "tools_match_rate": _rate(compared, "tools_match"),
        },
        "latency_ms": {
            "primary": _spread([float(r["primary_latency_ms"]) for r in compared]),
            "shadow": _spread([float(r["shadow_latency_ms"]) for r in compared]),
        },
        "cost_usd": {
            "primary_total": from_nanos(sum(int(r["primary_cost_nanos"]) for r in rows)),
            "shadow_total": from_nanos(sum(int(r["shadow_cost_nanos"]) for r in rows)),
            "primary_mean": _money_mean([int(r["primary_cost_nanos"]) for r in rows]),
            "shadow_mean": _money_mean([int(r["shadow_cost_nanos"]) for r in rows]),
        },
    }


def _rate(rows: list[Any], name: str) -> float | None:
    """The share of rows where ``name`` is true, among those where it applies (not NULL)."""
    known = [bool(row[name]) for row in rows if row[name] is not None]
    return round(sum(known) / len(known), 4) if known else None


def _mean(values: list[float]) -> float | None:
    return round(sum(values) / len(values), 4) if values else None


def _money_mean(nanos: list[int]) -> float | None:
    return from_nanos(sum(nanos) // len(nanos)) if nanos else None


def _percentile(ordered: list[float], pct: float) -> float | None:
    if not ordered:
        return None
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return round(ordered[rank - 1], 4)


def _spread(values: list[float]) -> dict[str, float | None]:
    ordered = sorted(values)
    return {"p50": _percentile(ordered, 50), "p95": _percentile(ordered, 95), "mean": _mean(ordered)}
