"""``GET /admin/shadow/{rule}/report``: agreement, latency and cost of a shadow rule's copies
(``gateway shadow report`` over HTTP). Authors, approvers and finance may read it."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Query

from gateway.admin.deps import get_runtime, require
from gateway.auth import Principal
from gateway.errors import InvalidRequest, NotFound
from gateway.runtime import Runtime
from gateway.shadow.report import parse_since, shadow_report

router = APIRouter(prefix="/admin/shadow", tags=["shadow"])


@router.get(
    "/{rule}/report",
    response_model=None,
    responses={
        200: {
            "description": "The rule's report: copies by outcome, agreement, latency and cost (see docs/shadow.md).",
            "content": {"application/json": {"schema": {"type": "object"}}},
        }
    },
)
async def report(
    rule: str,
    since: str | None = Query(None, description="A duration back from now (24h, 7d) or an ISO date/time; default 24h."),
    runtime: Runtime = Depends(get_runtime),
    _: Principal = Depends(require("author", "approver", "finance")),
) -> dict[str, Any]:
    """Copies recorded for ``rule`` since ``since``: outcomes, agreement with the primaries, latency and cost."""
    try:
        start = parse_since(since)
    except ValueError as exc:
        raise InvalidRequest(str(exc), param="since") from None
    found = await shadow_report(runtime.db, rule, start)
    if not found["copies"] and rule not in runtime.catalog.shadows.by_id:
        raise NotFound(
            f"No shadow rule '{rule}' in the applied policies, and no copies of it recorded.",
            code="shadow_rule_not_found",
        )
    return found
