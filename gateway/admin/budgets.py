"""``GET /admin/budgets``: where each team's budget stands (finance or admin role)."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, Field

from gateway.admin.deps import get_runtime, require
from gateway.auth import Principal
from gateway.runtime import Runtime

router = APIRouter(prefix="/admin/budgets", tags=["budgets"])


class BudgetStatusOut(BaseModel):
    team: str
    scope: str = Field(..., description='"team", or a sub-budget: "key:<key id>" or "alias:<alias>".')
    period: Literal["daily", "weekly", "monthly"]
    period_start: str = Field(..., description="Start of the current calendar period (UTC, ISO 8601).")
    resets_at: str = Field(..., description="When the period ends and spend starts again from zero.")
    hard: bool = Field(..., description="A hard budget refuses requests past its limit; a soft one alerts.")
    limit_usd: float
    spent_usd: float = Field(..., description="Committed spend this period.")
    reserved_usd: float = Field(..., description="Worst cases held by requests in flight.")
    remaining_usd: float = Field(..., description="limit - spent - reserved, never below 0.")
    used_pct: float
    forecast_usd: float = Field(..., description="Spend at period end if the average rate so far continues.")
    source: str = Field(..., description="redis, memory (live counters) or ledger (no live counters).")


@router.get("", response_model=list[BudgetStatusOut])
async def budget_status(
    team: str | None = Query(None, description="Only this team."),
    runtime: Runtime = Depends(get_runtime),
    _: Principal = Depends(require("finance")),
) -> list[BudgetStatusOut]:
    """Limit, spent, reserved, remaining and forecast for every budget and sub-budget."""
    if runtime.budget_reporter is None:
        return []
    return [BudgetStatusOut(**row) for row in await runtime.budget_reporter.statuses(team)]
