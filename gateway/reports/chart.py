"""The geometry of the finance page's chart: spend per team per day as stacked bars, with the
day's cache savings as a line. The template draws it as inline SVG (no scripts, no assets).

Only numbers and labels are computed here; every label is escaped by the template.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date
from typing import Final

from gateway.pricing import NANOS_PER_USD
from gateway.reports.costs import CostLine

# Colour-blind-friendly (Tableau 10); the last is for the teams folded into "other".
PALETTE: Final = ("#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1", "#ff9da7")
OTHER_COLOUR: Final = "#9c9c9c"
MAX_SERIES: Final = len(PALETTE)

WIDTH: Final = 1160
HEIGHT: Final = 340
_LEFT, _RIGHT, _TOP, _BOTTOM = 78, 16, 14, 44
_MAX_X_LABELS: Final = 14


@dataclass(frozen=True, slots=True)
class Bar:
    x: float
    y: float
    width: float
    height: float
    colour: str
    title: str


@dataclass(frozen=True, slots=True)
class Tick:
    position: float
    label: str


@dataclass(frozen=True, slots=True)
class Series:
    name: str
    colour: str
    cost_nanos: int


@dataclass
class Chart:
    width: int = WIDTH
    height: int = HEIGHT
    left: float = _LEFT
    top: float = _TOP
    plot_width: float = WIDTH - _LEFT - _RIGHT
    plot_height: float = HEIGHT - _TOP - _BOTTOM
    bars: list[Bar] = field(default_factory=list)
    y_ticks: list[Tick] = field(default_factory=list)
    x_ticks: list[Tick] = field(default_factory=list)
    series: list[Series] = field(default_factory=list)
    savings_points: str = ""  # SVG polyline points; empty when nothing was saved
    empty: bool = True

    @property
    def bottom(self) -> float:
        return self.top + self.plot_height


def nice_step(maximum: float, ticks: int = 5) -> float:
    """A round axis step (1, 2, 2.5 or 5 times 10^k) giving at most ``ticks`` intervals."""
    if maximum <= 0:
        return 1.0
    raw = maximum / ticks
    magnitude = 10.0 ** math.floor(math.log10(raw))
    for factor in (1, 2, 2.5, 5, 10):
        if factor * magnitude >= raw:
            return factor * magnitude
    return 10 * magnitude


def axis_money(usd: float, step: float) -> str:
    places = max(0, -math.floor(math.log10(step))) if step < 1 else 0
    if step < 1 and not math.isclose(round(step, places), step, rel_tol=1e-9):
        places += 1  # 0.25-style steps need one more place
    return f"${usd:,.{min(places, 6)}f}"


def build_chart(lines: Sequence[CostLine], days: Sequence[date]) -> Chart:
    """Lines grouped by ("day", "team") → bars stacked by team, biggest spender at the bottom."""
    chart = Chart()
    if not days:
        return chart
    by_team: dict[str, int] = {}
    per_day: dict[str, dict[str, int]] = {}
    saved: dict[str, int] = {}
    for line in lines:
        day, team = str(line.group.get("day")), str(line.group.get("team"))
        by_team[team] = by_team.get(team, 0) + line.cost_nanos
        per_day.setdefault(day, {})
        per_day[day][team] = per_day[day].get(team, 0) + line.cost_nanos
        saved[day] = saved.get(day, 0) + line.saved_nanos
    ranked = sorted((t for t, c in by_team.items() if c > 0), key=lambda t: (-by_team[t], t))
    shown = ranked[: MAX_SERIES - 1] if len(ranked) > MAX_SERIES else ranked
    colours = {team: PALETTE[i] for i, team in enumerate(shown)}
    chart.series = [Series(team, colours[team], by_team[team]) for team in shown]
    folded = ranked[len(shown):]
    if folded:
        chart.series.append(Series(f"other ({len(folded)} teams)", OTHER_COLOUR, sum(by_team[t] for t in folded)))

    day_keys = [d.isoformat() for d in days]
    highest = max(
        [sum(per_day.get(k, {}).values()) for k in day_keys] + [saved.get(k, 0) for k in day_keys] + [0]
    )
    if highest <= 0:
        return chart
    chart.empty = False
    step = nice_step(highest / NANOS_PER_USD)
    top_usd = step * math.ceil((highest / NANOS_PER_USD) / step)
    scale = chart.plot_height / top_usd
    count = math.floor(top_usd / step + 1e-9)
    chart.y_ticks = [
        Tick(chart.bottom - i * step * scale, axis_money(i * step, step)) for i in range(count + 1)
    ]

    slot = chart.plot_width / len(days)
    bar_width = max(slot * 0.72, 1.0)
    label_every = max(1, math.ceil(len(days) / _MAX_X_LABELS))
    points: list[str] = []
    for index, key in enumerate(day_keys):
        x = chart.left + index * slot + (slot - bar_width) / 2
        if index % label_every == 0:
            label = days[index]
            chart.x_ticks.append(Tick(chart.left + index * slot + slot / 2, f"{label.day} {label:%b}"))
        y = chart.bottom
        spend = per_day.get(key, {})
        other = sum(spend.get(t, 0) for t in folded)
        for team, nanos in [*((t, spend.get(t, 0)) for t in shown), ("other", other)]:
            if nanos <= 0:
                continue
            height = nanos / NANOS_PER_USD * scale
            y -= height
            colour = colours.get(team, OTHER_COLOUR)
            chart.bars.append(
                Bar(round(x, 2), round(y, 2), round(bar_width, 2), round(height, 2), colour,
                    f"{key} · {team}: ${nanos / NANOS_PER_USD:,.4f}")
            )
        centre = chart.left + index * slot + slot / 2
        points.append(f"{centre:.1f},{chart.bottom - saved.get(key, 0) / NANOS_PER_USD * scale:.1f}")
    if any(saved.get(k, 0) for k in day_keys):
        chart.savings_points = " ".join(points)
    return chart
