"""The finance page: ``/reports`` (server-rendered HTML and inline SVG), its sign-in, its CSV.

No build step and no external assets: the gateway may run where the browser cannot reach
the internet, so styles and the chart are inline and there is no JavaScript at all (the
Content-Security-Policy forbids scripts outright). Access needs the ``finance`` role (admin
keys pass), shown either as ``Authorization: Bearer`` or as the session cookie from
``/reports/login`` (see ``gateway.reports.sessions``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Final
from urllib.parse import parse_qs, urlencode

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, FileSystemLoader, StrictUndefined
from markupsafe import escape

from gateway.admin.deps import get_runtime
from gateway.auth import Principal, bearer_token
from gateway.errors import AuthenticationFailed, InvalidRequest
from gateway.reports.costs import CostQuery, Period, cost_report, parse_by
from gateway.reports.dashboard import build_dashboard
from gateway.reports.formats import money, to_csv
from gateway.reports.sessions import COOKIE, SESSION_TTL, ReportSessions
from gateway.runtime import Runtime

PAGE_MAX_DAYS: Final = 366
DEFAULT_DAYS: Final = 30
_MAX_FORM_BYTES: Final = 4096
FINANCE: Final = "finance"

_HEADERS: Final = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; img-src data:; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
}

_templates = Environment(
    loader=FileSystemLoader(Path(__file__).parent / "templates"),
    autoescape=True,
    undefined=StrictUndefined,
    auto_reload=False,
)
_templates.filters["money"] = money

router = APIRouter(prefix="/reports", tags=["finance page"], include_in_schema=False)


def _sessions(runtime: Runtime) -> ReportSessions:
    return ReportSessions(runtime.db, admin_key=runtime.settings.auth.admin_key.get_secret_value())


def _html(template: str, status: int = 200, **context: object) -> HTMLResponse:
    body = _templates.get_template(template).render(**context)
    return HTMLResponse(body, status_code=status, headers=_HEADERS)


def _to_login() -> RedirectResponse:
    return RedirectResponse("/reports/login", status_code=303, headers=_HEADERS)


async def _caller(request: Request, runtime: Runtime) -> Principal | None:
    """The bearer key's principal, else the session cookie's; ``None`` when neither is there."""
    header = request.headers.get("authorization")
    if header:
        token = bearer_token(header.encode("latin-1"))
        principal = await runtime.keys.authenticate(token) if token else None
        if principal is None:
            raise AuthenticationFailed("Invalid or missing API key.")
        return principal
    cookie = request.cookies.get(COOKIE)
    if cookie:
        return await _sessions(runtime).principal(cookie)
    return None


def _forbidden() -> HTMLResponse:
    return _html("login.html", 403, error="This key does not have the finance role.")


def _set_session(response: Response, request: Request, token: str) -> None:
    response.set_cookie(
        COOKIE,
        token,
        max_age=int(SESSION_TTL.total_seconds()),
        path="/reports",
        httponly=True,
        samesite="strict",
        # Behind a TLS-terminating proxy uvicorn reports https via X-Forwarded-Proto.
        secure=request.url.scheme == "https",
    )


@router.get("")
async def page(
    request: Request,
    from_: str | None = Query(None, alias="from"),
    to: str | None = Query(None),
    runtime: Runtime = Depends(get_runtime),
) -> Response:
    principal = await _caller(request, runtime)
    if principal is None:
        return _to_login()
    if not principal.has_role(FINANCE):
        return _forbidden()
    try:
        period = Period.parse(from_, to) if from_ or to else Period.last_days(DEFAULT_DAYS)
        if (period.end - period.start).days > PAGE_MAX_DAYS:
            raise InvalidRequest(f"The page shows at most {PAGE_MAX_DAYS} days; use the CSV export for more.")
    except InvalidRequest as exc:
        return HTMLResponse(f"<p>{escape(exc.message)}</p>", status_code=400, headers=_HEADERS)
    dashboard = await build_dashboard(runtime.db, period, runtime.budget_reporter)
    span = {"from": period.start.isoformat(), "to": period.end.isoformat()}
    return _html(
        "reports.html",
        d=dashboard,
        eval_team=runtime.settings.prompts.eval_team,  # evaluation traffic is spent under this team
        signed_in="authorization" not in request.headers,
        csv_daily=urlencode({**span, "by": "day,team"}),
        csv_detail=urlencode({**span, "by": "day,team,alias,model,prompt"}),
    )


@router.get("/costs.csv")
async def costs_csv(
    request: Request,
    from_: str | None = Query(None, alias="from"),
    to: str | None = Query(None),
    by: str = "day,team",
    runtime: Runtime = Depends(get_runtime),
) -> Response:
    """The page's CSV export (cookie or bearer); the same report as ``/admin/reports/costs``."""
    principal = await _caller(request, runtime)
    if principal is None:
        return _to_login()
    if not principal.has_role(FINANCE):
        return _forbidden()
    period = Period.parse(from_, to)
    report = await cost_report(runtime.db, CostQuery(period, by=parse_by(by) or ("team",)))
    return csv_response(to_csv(report), period)


def csv_response(body: str, period: Period) -> Response:
    filename = f"gateway-costs-{period.start}-to-{period.end}.csv"
    return Response(
        body,
        media_type="text/csv; charset=utf-8",
        headers={**_HEADERS, "Content-Disposition": f'attachment; filename="{filename}"'},
    )


@router.get("/login")
async def login_form(request: Request, runtime: Runtime = Depends(get_runtime)) -> Response:
    """The sign-in form, or — with ``?token=`` — the redemption of a one-time login link."""
    token = request.query_params.get("token")
    if token is None:
        return _html("login.html", error=None)
    redeemed = await _sessions(runtime).redeem_link(token)
    if redeemed is None:
        return _html("login.html", 401, error="This login link is invalid, expired or already used.")
    response = RedirectResponse("/reports", status_code=303, headers=_HEADERS)
    _set_session(response, request, redeemed[0])
    return response


@router.post("/login")
async def login(request: Request, runtime: Runtime = Depends(get_runtime)) -> Response:
    length = request.headers.get("content-length")
    if length is not None and (not length.isdigit() or int(length) > _MAX_FORM_BYTES):
        return _html("login.html", 413, error="The form is too large.")
    raw = await request.body()
    if len(raw) > _MAX_FORM_BYTES:
        return _html("login.html", 413, error="The form is too large.")
    key = (parse_qs(raw.decode("utf-8", "replace")).get("key") or [""])[0].strip()
    principal = await runtime.keys.authenticate(key) if key else None
    if principal is None:
        return _html("login.html", 401, error="Unknown or revoked API key.")
    if not principal.has_role(FINANCE):
        return _forbidden()
    token, _ = await _sessions(runtime).create_session(key)
    response = RedirectResponse("/reports", status_code=303, headers=_HEADERS)
    _set_session(response, request, token)
    return response


@router.post("/logout")
async def logout(request: Request, runtime: Runtime = Depends(get_runtime)) -> Response:
    cookie = request.cookies.get(COOKIE)
    if cookie:
        await _sessions(runtime).end(cookie)
    response = _to_login()
    response.delete_cookie(COOKIE, path="/reports", httponly=True, samesite="strict")
    return response
