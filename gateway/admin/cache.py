"""``/admin/cache``: purge cached answers and read the cache's state (admin role).

Purges go through the running server because the embedded store lives inside it; with
Redis they reach every replica's entries at once. Each purge is written to the audit log.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends
from pydantic import BaseModel, ConfigDict, Field

from gateway.admin.deps import actor_of, get_runtime, require
from gateway.auth import Principal
from gateway.cache import Cache, CacheUnavailable, PurgeFilter
from gateway.errors import InvalidRequest, NotFound, ServiceUnavailable
from gateway.runtime import Runtime

router = APIRouter(prefix="/admin/cache", tags=["cache"])


class PurgeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    team: str | None = Field(
        None, min_length=1, description="The team's entries: its own scope and the scope it shares, if any."
    )
    alias: str | None = Field(None, min_length=1, description="Entries of this model alias.")
    prompt: str | None = Field(None, min_length=1, description="Entries of this prompt (any version).")
    prompt_version: int | None = Field(None, ge=1, description="Only this version of `prompt`.")
    all: bool = Field(False, description="Purge everything; required when no filter is given.")


class PurgeResult(BaseModel):
    purged: int = Field(..., description="Entries removed.")
    backend: str
    scopes: list[str] | None = Field(None, description="The key scopes purged when a team was given.")


def cache_of(runtime: Runtime) -> Cache:
    if not isinstance(runtime.cache, Cache):
        raise NotFound("The response cache is turned off (cache.enabled: false).", code="cache_disabled")
    return runtime.cache


@router.post("/purge", response_model=PurgeResult)
async def purge(
    body: PurgeRequest,
    runtime: Runtime = Depends(get_runtime),
    principal: Principal = Depends(require("admin")),
) -> PurgeResult:
    cache = cache_of(runtime)
    if body.prompt_version is not None and body.prompt is None:
        raise InvalidRequest("prompt_version needs prompt.", param="prompt_version")
    filtered = any(value is not None for value in (body.team, body.alias, body.prompt))
    if not filtered and not body.all:
        raise InvalidRequest("Give team, alias, prompt or prompt_version, or all: true to purge everything.")
    scopes = cache.scopes_of_team(runtime.catalog, body.team) if body.team else None
    selection = PurgeFilter(scopes, body.alias, body.prompt, body.prompt_version)
    try:
        purged = await cache.purge(selection)
    except CacheUnavailable as exc:
        raise ServiceUnavailable(str(exc), code="cache_unavailable") from None
    target = ",".join(
        f"{name}={value}"
        for name, value in (
            ("team", body.team),
            ("alias", body.alias),
            ("prompt", body.prompt),
            ("prompt_version", body.prompt_version),
        )
        if value is not None
    )
    await runtime.audit.append(
        actor_of(principal), "cache.purge", f"cache:{target or 'all'}", after={"purged": purged}
    )
    return PurgeResult(purged=purged, backend=cache.store.name, scopes=list(scopes) if scopes else None)


@router.get("/stats")
async def stats(
    runtime: Runtime = Depends(get_runtime), _: Principal = Depends(require("admin"))
) -> dict[str, Any]:
    """This process's view: backend, breaker state, outcome counts since start, store size."""
    return await cache_of(runtime).stats()
