"""Shared dependencies of the admin routes: the runtime, and the caller's key and roles."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Depends, Request

from gateway.audit import Actor
from gateway.auth import Principal, bearer_token
from gateway.errors import AuthenticationFailed, PermissionDenied
from gateway.runtime import Runtime


def get_runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


async def get_principal(request: Request) -> Principal:
    runtime = get_runtime(request)
    token = bearer_token(request.headers.get("authorization", "").encode("latin-1"))
    principal = await runtime.keys.authenticate(token) if token else None
    if principal is None:
        raise AuthenticationFailed("Invalid or missing API key.")
    return principal


def require(*roles: str) -> Callable[..., Coroutine[Any, Any, Principal]]:
    """A dependency admitting keys with any of ``roles`` (admin keys always pass)."""

    async def check(principal: Principal = Depends(get_principal)) -> Principal:
        if not principal.has_role(*roles):
            raise PermissionDenied(
                f"This needs one of the roles: {', '.join(roles)}.", code="insufficient_role"
            )
        return principal

    return check


def actor_of(principal: Principal) -> Actor:
    return Actor(key_id=principal.key_id, team=principal.team)
