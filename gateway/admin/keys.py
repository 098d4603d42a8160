"""``/admin/keys``: create, list and revoke team API keys (admin role)."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from pydantic import BaseModel, Field

from gateway.admin.deps import actor_of, get_runtime, require
from gateway.admin.types import UtcDateTime
from gateway.auth import ROLES, KeyRecord, Principal
from gateway.errors import InvalidRequest, NotFound
from gateway.runtime import Runtime

router = APIRouter(prefix="/admin/keys", tags=["keys"])


class KeyCreate(BaseModel):
    team: str = Field(..., min_length=1, description="The team the key spends for.")
    roles: list[str] = Field(default_factory=lambda: ["app"], description=f"Any of {', '.join(ROLES)}.")
    name: str = Field("", description="A label for humans.")
    check_team: bool = Field(False, description="Refuse a team that no applied policy names (a key for it would "
                             "be refused at every request): the CLI's check, skipped by its --force.")


class KeyOut(BaseModel):
    key_id: str
    prefix: str
    team: str
    roles: list[str]
    name: str
    created_at: UtcDateTime
    revoked_at: UtcDateTime | None

    @classmethod
    def of(cls, record: KeyRecord) -> KeyOut:
        return cls(
            key_id=record.key_id, prefix=record.prefix, team=record.team, roles=list(record.roles),
            name=record.name, created_at=record.created_at, revoked_at=record.revoked_at,
        )


class KeyCreated(KeyOut):
    key: str = Field(..., description="The key itself. Shown once; only its hash is stored.")


@router.post("", response_model=KeyCreated, status_code=201)
async def create_key(
    body: KeyCreate, runtime: Runtime = Depends(get_runtime), principal: Principal = Depends(require("admin"))
) -> KeyCreated:
    if body.check_team and runtime.catalog.team(body.team) is None:
        known = ", ".join(sorted(runtime.catalog.teams)) or "none"
        raise InvalidRequest(
            f"no policy names the team {body.team!r} (known teams: {known}). Keys for it would be refused; add "
            "the team to the policy, or pass --force if it is coming.", param="team", code="unknown_team")
    try:
        created = await runtime.keys.create(body.team, tuple(body.roles), body.name, actor=actor_of(principal))
    except ValueError as exc:
        raise InvalidRequest(str(exc), param="roles") from None
    return KeyCreated(**KeyOut.of(created.record).model_dump(), key=created.secret)


@router.get("", response_model=list[KeyOut])
async def list_keys(
    team: str | None = None,
    include_revoked: bool = False,
    runtime: Runtime = Depends(get_runtime),
    _: Principal = Depends(require("admin")),
) -> list[KeyOut]:
    return [KeyOut.of(record) for record in await runtime.keys.list(team, include_revoked)]


@router.delete("/{key_id}", status_code=204)
async def revoke_key(
    key_id: str, runtime: Runtime = Depends(get_runtime), principal: Principal = Depends(require("admin"))
) -> None:
    if not await runtime.keys.revoke(key_id, actor=actor_of(principal)):
        raise NotFound(f"No active key {key_id!r}.", code="key_not_found")
