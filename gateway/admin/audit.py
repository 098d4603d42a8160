"""``/admin/audit`` and ``/admin/policies``: the audit log and applied policies over HTTP,
for CI pipelines and UIs (admin role)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, Field

from gateway.admin.deps import actor_of, get_runtime, require
from gateway.admin.types import UtcDateTime
from gateway.audit import AuditLog
from gateway.auth import Principal
from gateway.config.applied import PolicyStore
from gateway.config.yamlfile import ConfigError
from gateway.errors import InvalidRequest
from gateway.runtime import Runtime

router = APIRouter(tags=["audit and policies"])


class AuditEntryOut(BaseModel):
    seq: int
    ts: UtcDateTime
    actor_key_id: str
    actor_team: str
    action: str
    target: str
    before: Any
    after: Any
    reason: str | None
    ticket: str | None
    prev_hash: str
    hash: str


class VerifyOut(BaseModel):
    ok: bool
    entries: int
    broken_at: int | None = None
    problem: str | None = None


@router.get("/admin/audit", response_model=list[AuditEntryOut])
async def list_audit(
    since: datetime | None = None,
    target: str | None = Query(None, description="Target or prefix, e.g. prompt:support-answer"),
    actor: str | None = Query(None, description="Actor key id or team"),
    action: str | None = None,
    limit: int = Query(1000, ge=1, le=100_000),
    runtime: Runtime = Depends(get_runtime),
    _: Principal = Depends(require("admin", "approver", "finance")),
) -> list[AuditEntryOut]:
    entries = await AuditLog(runtime.db).list(since=since, target=target, actor=actor, action=action, limit=limit)
    return [AuditEntryOut(**entry.as_dict()) for entry in entries]


@router.get("/admin/audit/verify", response_model=VerifyOut)
async def verify_audit(
    runtime: Runtime = Depends(get_runtime), _: Principal = Depends(require("admin", "approver", "finance"))
) -> VerifyOut:
    log = AuditLog(runtime.db)
    broken = await log.verify()
    count = len(await log.list())
    if broken is None:
        return VerifyOut(ok=True, entries=count)
    return VerifyOut(ok=False, entries=count, broken_at=broken.seq, problem=broken.problem)


class PoliciesOut(BaseModel):
    version: int | None = Field(None, description="The applied version; null when never applied.")
    serving_version: int | None = Field(None, description="The version this replica serves.")
    applied_at: UtcDateTime | None = Field(None, description="When the applied version was applied.")
    applied_by: str | None = Field(None, description="Who applied it (the audit actor).")
    files: dict[str, str] = Field(default_factory=dict)


class PoliciesApply(BaseModel):
    files: dict[str, str] = Field(..., description="Policy file name (e.g. teams.yaml) → its YAML text.")
    reason: str | None = None
    ticket: str | None = None
    dry_run: bool = False


class PoliciesApplied(BaseModel):
    version: int | None = Field(None, description="The new version; null when nothing changed or dry run.")
    diff: str


@router.get("/admin/policies", response_model=PoliciesOut)
async def get_policies(
    runtime: Runtime = Depends(get_runtime), _: Principal = Depends(require("admin"))
) -> PoliciesOut:
    snapshot = await PolicyStore(runtime.db).latest()
    return PoliciesOut(
        version=snapshot.version if snapshot else None,
        serving_version=runtime.policy_version,
        applied_at=snapshot.applied_at if snapshot else None,
        applied_by=snapshot.actor if snapshot else None,
        files=snapshot.files if snapshot else {},
    )


@router.post("/admin/policies/apply", response_model=PoliciesApplied)
async def apply_policies(
    body: PoliciesApply, runtime: Runtime = Depends(get_runtime), principal: Principal = Depends(require("admin"))
) -> PoliciesApplied:
    if not body.files or any("/" in name or not name.endswith(".yaml") for name in body.files):
        raise InvalidRequest("files must map plain *.yaml names to their text", param="files")
    try:
        result = await PolicyStore(runtime.db).apply(
            body.files, actor_of(principal), reason=body.reason, ticket=body.ticket, dry_run=body.dry_run
        )
    except ConfigError as exc:
        raise InvalidRequest("; ".join(exc.problems), param="files", code="invalid_policy",
                             extra={"problems": exc.problems}) from None
    if result.version is not None:
        runtime.use_catalog(result.catalog, result.version)  # this replica at once; the others poll
    return PoliciesApplied(version=result.version, diff=result.diff)
