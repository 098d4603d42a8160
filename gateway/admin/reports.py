"""``/admin/reports``: cost reports and finance-page login links (finance role; admin passes).

``GET /admin/reports/costs`` is ``gateway report costs`` over HTTP; the ``/reports`` page's
own routes (HTML, sign-in, its CSV) are in ``gateway.reports.page`` and included here too.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, Field

from gateway.admin.deps import get_runtime, require
from gateway.admin.types import UtcDateTime
from gateway.auth import Principal, bearer_token
from gateway.errors import AuthenticationFailed
from gateway.reports import CostQuery, Period, cost_report, parse_by, to_csv, to_json_dict
from gateway.reports.page import csv_response
from gateway.reports.page import router as page_router
from gateway.reports.sessions import ReportSessions
from gateway.runtime import Runtime

__all__ = ["page_router", "router"]

router = APIRouter(prefix="/admin/reports", tags=["reports"])


class Format(StrEnum):
    json = "json"
    csv = "csv"


class LoginLink(BaseModel):
    url: str = Field(..., description="Open once in a browser within the expiry; it sets a session cookie.")
    expires_at: UtcDateTime


@router.get("/costs", response_model=None, responses={200: {
    "description": "Cost rows: JSON by default, CSV with format=csv.",
    "content": {"application/json": {"schema": {"type": "object"}}, "text/csv": {"schema": {"type": "string"}}},
}})
async def costs(
    from_: str | None = Query(None, alias="from", description="First UTC date, inclusive (YYYY-MM-DD)."),
    to: str | None = Query(None, description="Last UTC date, exclusive (YYYY-MM-DD)."),
    by: str = Query("team", description="Comma-separated: team, alias, model, deployment, prompt, day, key, "
                    "variant, kind."),
    format: Format = Query(Format.json, description="json or csv (a text/csv download)."),
    team: str | None = Query(None, description="Only this team's rows."),
    key: str | None = Query(None, description="Only this key id's rows."),
    runtime: Runtime = Depends(get_runtime),
    _: Principal = Depends(require("finance")),
) -> Any:
    """Spend, tokens and cache savings for ``from`` (inclusive) to ``to`` (exclusive), UTC dates.

    Defaults: from the first day of the current UTC month to tomorrow.
    """
    period = Period.parse(from_, to)
    report = await cost_report(runtime.db, CostQuery(period, by=parse_by(by), team=team, key=key))
    if format is Format.csv:
        return csv_response(to_csv(report), period)
    return to_json_dict(report)


@router.post("/login-links", response_model=LoginLink, status_code=201)
async def create_login_link(
    request: Request,
    runtime: Runtime = Depends(get_runtime),
    _: Principal = Depends(require("finance")),
) -> LoginLink:
    """A one-time link into ``/reports`` acting for the calling key: valid once, for two minutes.

    For headless browsers and tools that cannot send a bearer header; the key itself never
    appears in a URL.
    """
    token = bearer_token(request.headers.get("authorization", "").encode("latin-1"))
    if token is None:  # require() already authenticated the header; this only narrows the type
        raise AuthenticationFailed("Invalid or missing API key.")
    sessions = ReportSessions(runtime.db, admin_key=runtime.settings.auth.admin_key.get_secret_value())
    link, expires = await sessions.create_link(token)
    return LoginLink(url=f"/reports/login?token={link}", expires_at=expires)
