"""Stage 2, authenticate: ``Authorization: Bearer <key>`` → ``ctx.principal``.

Who is checked is decided by the request's origin, not by what is already on it: a caller's
request (``Origin.CALLER``, from ``/v1``) always has its key checked, whatever the context
holds; internal requests (evaluation cases, shadow copies) were made by the gateway for a
principal it already knows, and are never checked (there is no key to check).
"""

from __future__ import annotations

from gateway.auth.keys import KeyStore
from gateway.context import Reply, RequestContext
from gateway.errors import AuthenticationFailed
from gateway.pipeline_types import Handler


def bearer_token(header: bytes | None) -> str | None:
    if not header:
        return None
    scheme, _, token = header.partition(b" ")
    if scheme.lower() != b"bearer" or not token.strip():
        return None
    # Issued keys are ASCII, so a token with other bytes is a wrong key, not a missing one:
    # latin-1 decodes any bytes, and the lookup then answers "invalid" like for any other.
    return token.strip().decode("latin-1")


class Authenticate:
    def __init__(self, keys: KeyStore) -> None:
        self._keys = keys

    async def __call__(self, ctx: RequestContext, call_next: Handler) -> Reply:
        if ctx.origin.internal:
            if ctx.principal is None:
                raise AuthenticationFailed("An internal request must act for a principal.", code="missing_principal")
            return await call_next(ctx)
        token = bearer_token(ctx.authorization)
        if token is None:
            raise AuthenticationFailed(
                "Missing API key: send it as 'Authorization: Bearer <key>'.", code="missing_api_key"
            )
        principal = await self._keys.authenticate(token)
        if principal is None:
            # Never echo the key back, not even partly.
            raise AuthenticationFailed("Invalid or revoked API key.")
        ctx.principal = principal
        return await call_next(ctx)
