"""In front of every route outside ``/v1``: authenticate before reading, read a bounded body.

FastAPI reads and parses a request's body before any dependency runs, so a route's own
key and role checks came after the body was in memory: an unauthenticated 200 MB push
reached 728 MiB of RSS, and any valid key could make the gateway parse and compile a prompt
it was not allowed to push. This layer runs first, in order:

1. a body-bearing request to ``/admin/...`` must carry a valid key (401 otherwise), and a
   prompt push a key with the ``author`` role (403), checked before a byte of the body is read;
2. ``/reports/login`` and ``/reports/logout`` must come from this site: a browser sends
   ``Origin`` (or at least ``Referer``) on a POST, and a cross-site one is refused (403), so
   no other site can sign a finance user in or out. Clients that send neither (curl) are not
   browsers and cannot be driven by another site;
3. the body is read here, up to a limit, enforced while reading (a chunked body has no length
   to check first): past it, 413 ``request_too_large``. The app then gets the body as read.

Errors are OpenAI-shaped, like every other error the gateway gives.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import urlsplit

from gateway.auth import Principal, bearer_token
from gateway.errors import AuthenticationFailed, GatewayError, PermissionDenied, RequestTooLarge, error_body

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
Authenticate = Callable[[str], Awaitable[Principal | None]]

#: The sign-in form holds one API key: a few KiB is plenty.
LOGIN_MAX_BODY = 16 * 1024
_SAME_SITE_ONLY = frozenset({"/reports/login", "/reports/logout"})
# Routes whose work before their own role check is expensive: the role is checked here first.
_ROLE_BEFORE_BODY = {("POST", "/admin/prompts"): "author"}
_NO_BODY = frozenset({"GET", "HEAD", "OPTIONS"})


class _TooLarge(Exception):
    pass


class AdminGuard:
    """ASGI middleware for the non-``/v1`` app (see the module docstring)."""

    def __init__(self, app: ASGIApp, authenticate: Authenticate, *, max_body: int) -> None:
        self.app = app
        self.authenticate = authenticate
        self.max_body = max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in _NO_BODY:
            await self.app(scope, receive, send)
            return
        path: str = scope["path"].rstrip("/") or "/"
        headers = {name.lower(): value for name, value in scope["headers"]}
        try:
            if path.startswith("/admin/") or path == "/admin":
                await self._authorise(scope["method"], path, headers)
            if path in _SAME_SITE_ONLY:
                _same_site(headers)
            limit = LOGIN_MAX_BODY if path in _SAME_SITE_ONLY else self.max_body
            body = await _read_body(receive, headers.get(b"content-length"), limit)
        except GatewayError as error:
            await _send_error(send, error)
            return
        except _TooLarge:
            await _send_error(send, RequestTooLarge(f"The request body is larger than the limit of {limit} bytes."))
            return
        if body is None:
            return  # the client went away while sending

        sent = False

        async def replay() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _authorise(self, method: str, path: str, headers: dict[bytes, bytes]) -> None:
        token = bearer_token(headers.get(b"authorization"))
        principal = await self.authenticate(token) if token else None
        if principal is None:
            raise AuthenticationFailed("Invalid or missing API key.")
        role = _ROLE_BEFORE_BODY.get((method, path))
        if role is not None and not principal.has_role(role):
            held = ", ".join(sorted(principal.roles)) or "none"
            raise PermissionDenied(f"This needs the {role} or admin role (this key has: {held}).",
                                   code="insufficient_role")


def _same_site(headers: dict[bytes, bytes]) -> None:
    host = headers.get(b"host", b"").decode("latin-1").lower()
    for name in (b"origin", b"referer"):
        value = headers.get(name)
        if value is None:
            continue
        seen = value.decode("latin-1")
        if seen == "null" or urlsplit(seen).netloc.lower() != host:
            raise PermissionDenied("Cross-site sign-in requests are refused.", code="cross_site_request")
        return


async def _read_body(receive: Receive, length: bytes | None, limit: int) -> bytes | None:
    if length is not None and (not length.isdigit() or int(length) > limit):
        raise _TooLarge
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunk: bytes = message.get("body", b"")
        if chunk:
            size += len(chunk)
            if size > limit:
                raise _TooLarge
            chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


async def _send_error(send: Send, error: GatewayError) -> None:
    body = error_body(error)
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
               (b"connection", b"close")]
    headers.extend((key.encode(), value.encode()) for key, value in error.headers.items())
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
