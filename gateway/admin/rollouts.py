"""``/admin/rollouts``: progressive rollouts over HTTP, mirroring ``gateway rollouts``.

Thin shells over ``RolloutControl``, which does the role checks (see ``gateway.rollouts.control``):
reading needs ``author``, ``approver`` or ``admin``; changes need the role their rollout needs.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends
from pydantic import BaseModel, Field

from gateway.admin.deps import get_runtime, require
from gateway.auth import Principal
from gateway.errors import ServiceUnavailable
from gateway.rollouts.control import RolloutControl
from gateway.runtime import Runtime

router = APIRouter(prefix="/admin/rollouts", tags=["rollouts"])


def get_control(runtime: Runtime = Depends(get_runtime)) -> RolloutControl:
    if runtime.rollout_control is None:
        raise ServiceUnavailable("Rollouts are not enabled on this gateway.")
    return runtime.rollout_control


class ChangeIn(BaseModel):
    reason: str | None = Field(None, description="Why; kept in the audit log.")
    ticket: str | None = Field(None, max_length=200, description="A ticket id for the audit log.")
    force: bool = Field(False, description="start/promote: skip the evaluation gate of a protected label "
                        "(needs a reason).")


def _caller(principal: Principal) -> Any:
    from gateway.prompts import Caller

    return Caller.of(principal)


@router.get("", summary="Every rollout with its live state")
async def list_rollouts(
    control: RolloutControl = Depends(get_control),
    _: Principal = Depends(require("author", "approver")),
) -> list[dict[str, Any]]:
    return [view.as_dict() for view in await control.views()]


@router.get("/{rollout}", summary="One rollout: policy, live state, check history")
async def show_rollout(
    rollout: str,
    control: RolloutControl = Depends(get_control),
    _: Principal = Depends(require("author", "approver")),
) -> dict[str, Any]:
    return (await control.view(rollout)).as_dict()


@router.post("/{rollout}/{action}", summary="start, pause, resume, promote or abort a rollout")
async def change_rollout(
    rollout: str,
    action: str,
    change: ChangeIn | None = None,
    control: RolloutControl = Depends(get_control),
    principal: Principal = Depends(require("author", "approver")),
) -> dict[str, Any]:
    given = change or ChangeIn()
    caller = _caller(principal)
    common: dict[str, Any] = {"reason": given.reason, "ticket": given.ticket}
    if action == "start":
        view = await control.start(rollout, caller, force=given.force, **common)
    elif action == "promote":
        view = await control.promote(rollout, caller, force=given.force, **common)
    elif action == "pause":
        view = await control.pause(rollout, caller, **common)
    elif action == "resume":
        view = await control.resume(rollout, caller, **common)
    elif action == "abort":
        view = await control.abort(rollout, caller, **common)
    else:
        from gateway.errors import NotFound

        raise NotFound(f"Unknown rollout action '{action}': start, pause, resume, promote or abort.",
                       param="action", code="unknown_action")
    return view.as_dict()
