"""The OpenAI wire format at the edge: ``/v1`` requests in, replies and errors out.

This is raw ASGI on purpose. The ``/v1`` path is the gateway's reason to exist and must add
well under a millisecond: no framework routing, no request/response objects, no validation
beyond ``gateway.parse``, one JSON parse and no re-serialisation of upstream answers.
Each request gets a watcher for the caller going away, which cancels the upstream call.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import orjson

from gateway import ids
from gateway.auth import bearer_token
from gateway.context import Endpoint, JsonReply, RequestContext, StreamReply
from gateway.core import CLIENT_CLOSED
from gateway.errors import (
    AuthenticationFailed,
    GatewayError,
    InvalidRequest,
    NotFound,
    RequestTooLarge,
    ServiceUnavailable,
    error_body,
)
from gateway.runtime import Runtime
from gateway.wire import error_event

log = logging.getLogger("gateway.server")

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

_ENDPOINTS = {"/v1/chat/completions": Endpoint.CHAT, "/v1/embeddings": Endpoint.EMBEDDINGS}
_REQUEST_ID = re.compile(rb"^[A-Za-z0-9._\-]{1,64}$")
_JSON_HEADERS = [(b"content-type", b"application/json")]
_SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]


class _Watch:
    """Cancels the request's task if the caller disconnects before the answer is complete.

    It ends by itself once the answer is complete: the ASGI server's ``receive`` then reports
    ``http.disconnect`` (uvicorn does so as soon as the last body chunk is sent), and ``done``
    tells the watcher that this is no reason to cancel anything. Cancelling it instead cost
    ~10 µs a request (7 % of the gateway's CPU), so it is cancelled only when the answer was
    left incomplete (``complete`` unset), when nothing would wake it but the connection closing.
    """

    __slots__ = ("complete", "disconnected", "done")

    def __init__(self) -> None:
        self.done = False  # no more disconnect-cancels: the answer is (being) sent in full
        self.complete = False  # the last byte of the answer went to the server
        self.disconnected = False

    async def watch(self, receive: Receive, request_task: asyncio.Task[Any]) -> None:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                if not self.done:
                    self.disconnected = True
                    request_task.cancel()
                return


class OpenAIApi:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.max_body = runtime.settings.server.max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        headers = _Headers(scope["headers"])
        request_id = _request_id(headers.request_id)
        path = scope["path"].rstrip("/")
        endpoint = _ENDPOINTS.get(path)
        try:
            if endpoint is None:
                if path == "/v1/models":
                    await self._models(headers, send, request_id, started)
                    return
                if path == "/v1/feedback":
                    await self._feedback(scope, headers, receive, send, request_id, started)
                    return
                raise NotFound(f"Unknown endpoint {scope['method']} {scope['path']}.", code="unknown_url")
            if scope["method"] != "POST":
                raise InvalidRequest(f"{scope['path']} takes POST.", code="method_not_allowed", status=405)
            body = await self._read_body(headers.content_length, receive)
        except GatewayError as error:
            await _send_error(send, error, request_id, started)
            return
        ctx = RequestContext(
            request_id=request_id.decode(),
            endpoint=endpoint,
            raw_body=body,
            authorization=headers.authorization,
            catalog=self.runtime.catalog,
            started=started,
        )
        if headers.cache_control is not None:
            ctx.cache_control = headers.cache_control.decode("latin-1")
        if headers.session_id is not None:
            ctx.session_id = headers.session_id[:200].decode("latin-1")
        if headers.data_class is not None:
            ctx.data_class_header = headers.data_class[:200].decode("latin-1").strip()
        if headers.traceparent is not None:
            ctx.traceparent = headers.traceparent[:64].decode("latin-1")
        await self._serve(ctx, receive, send)

    async def _serve(self, ctx: RequestContext, receive: Receive, send: Send) -> None:
        watch = _Watch()
        task = asyncio.current_task()
        assert task is not None
        watcher = asyncio.get_running_loop().create_task(watch.watch(receive, task))
        assert self.runtime.core is not None
        try:
            reply = await self.runtime.core.handle(ctx)
            if isinstance(reply, JsonReply):
                watch.done = True
                await self._send_json(send, ctx, reply)
            else:
                await self._send_stream(send, ctx, reply, watch)
            watch.complete = True
        except asyncio.CancelledError:
            if not watch.disconnected:
                # Not the caller leaving: the server is stopping (graceful shutdown ran out of
                # time). A stream already under way is cut; say so in-band, and record it as
                # cut, not as the complete success its 200 status line announced.
                if not watch.complete and ctx.stream and ctx.status == 200 and ctx.error is None:
                    await _cut_at_shutdown(send, ctx)
                raise
            task.uncancel()
            ctx.status = CLIENT_CLOSED
        finally:
            if not watch.complete and not watch.disconnected:
                watcher.cancel()
            ctx.finish()

    async def _send_json(self, send: Send, ctx: RequestContext, reply: JsonReply) -> None:
        ctx.overhead_seconds = time.perf_counter() - ctx.started - ctx.upstream_seconds
        headers = [
            *_JSON_HEADERS,
            (b"content-length", str(len(reply.body)).encode()),
            *_common_headers(ctx),
            *reply.headers,
        ]
        await send({"type": "http.response.start", "status": reply.status, "headers": headers})
        await send({"type": "http.response.body", "body": reply.body})

    async def _send_stream(self, send: Send, ctx: RequestContext, reply: StreamReply, watch: _Watch) -> None:
        ctx.overhead_seconds = time.perf_counter() - ctx.started - ctx.upstream_seconds
        headers = [*_SSE_HEADERS, *_common_headers(ctx), *reply.headers]
        await send({"type": "http.response.start", "status": reply.status, "headers": headers})
        events = reply.events
        try:
            async for chunk in events:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        finally:
            aclose = getattr(events, "aclose", None)
            if aclose is not None:
                await aclose()
        watch.done = True
        await send({"type": "http.response.body", "body": b""})

    async def _models(self, headers: _Headers, send: Send, request_id: bytes, started: float) -> None:
        token = bearer_token(headers.authorization)
        principal = await self.runtime.keys.authenticate(token) if token else None
        if principal is None:
            raise AuthenticationFailed("Invalid or missing API key.")
        catalog = self.runtime.catalog
        team = catalog.team(principal.team)
        created = int(time.time())
        data = [
            {"id": name, "object": "model", "created": created, "owned_by": "gateway"}
            for name in catalog.aliases
            if team is not None and team.allows_model(name)
        ]
        if self.runtime.prompts is not None and team is not None:
            lister = getattr(self.runtime.prompts, "list_models", None)
            if lister is not None:
                data.extend(await lister(team, created))
        body = orjson.dumps({"object": "list", "data": data})
        response_headers = [
            *_JSON_HEADERS,
            (b"content-length", str(len(body)).encode()),
            (b"x-request-id", request_id),
            (b"x-gateway-overhead-ms", _ms(time.perf_counter() - started)),
        ]
        await send({"type": "http.response.start", "status": 200, "headers": response_headers})
        await send({"type": "http.response.body", "body": body})

    async def _feedback(self, scope: Scope, headers: _Headers, receive: Receive, send: Send, request_id: bytes,
                        started: float) -> None:
        """``POST /v1/feedback`` (gateway.feedback): the key first, then a bounded body."""
        if scope["method"] != "POST":
            raise InvalidRequest(f"{scope['path']} takes POST.", code="method_not_allowed", status=405)
        token = bearer_token(headers.authorization)
        principal = await self.runtime.keys.authenticate(token) if token else None
        if principal is None:
            raise AuthenticationFailed("Invalid or missing API key.")
        service = self.runtime.feedback
        if service is None:
            raise NotFound(f"Unknown endpoint {scope['method']} {scope['path']}.", code="unknown_url")
        from gateway.feedback.service import parse_body

        body = parse_body(await self._read_body(headers.content_length, receive))
        stored = await service.post(principal, body)
        payload = orjson.dumps(stored.as_dict())
        response_headers = [
            *_JSON_HEADERS,
            (b"content-length", str(len(payload)).encode()),
            (b"x-request-id", request_id),
            (b"x-gateway-overhead-ms", _ms(time.perf_counter() - started)),
        ]
        await send({"type": "http.response.start", "status": 201, "headers": response_headers})
        await send({"type": "http.response.body", "body": payload})

    async def _read_body(self, length: bytes | None, receive: Receive) -> bytes:
        if length is not None and length.isdigit() and int(length) > self.max_body:
            raise RequestTooLarge(f"The request body is larger than the limit of {self.max_body} bytes.")
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise InvalidRequest("The client disconnected while sending the body.", code="client_closed")
            chunk = message.get("body", b"")
            if chunk:
                size += len(chunk)
                if size > self.max_body:
                    raise RequestTooLarge(f"The request body is larger than the limit of {self.max_body} bytes.")
                chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)


class _Headers:
    """The few request headers the gateway reads, found in one pass over the list.

    uvicorn hands headers as a list of lowercase (name, value) byte pairs; scanning it once
    instead of once per wanted header matters on a path that must cost microseconds.
    """

    __slots__ = (
        "authorization", "cache_control", "content_length", "data_class", "request_id", "session_id", "traceparent"
    )

    def __init__(self, raw: list[tuple[bytes, bytes]]) -> None:
        self.authorization: bytes | None = None
        self.cache_control: bytes | None = None
        self.content_length: bytes | None = None
        self.request_id: bytes | None = None
        self.session_id: bytes | None = None
        self.data_class: bytes | None = None
        self.traceparent: bytes | None = None
        for name, value in raw:
            if name == b"authorization":
                self.authorization = value
            elif name == b"content-length":
                self.content_length = value
            elif name == b"x-request-id":
                self.request_id = value
            elif name == b"cache-control":
                self.cache_control = value
            elif name == b"x-session-id":
                self.session_id = value
            elif name == b"x-data-class":
                self.data_class = value
            elif name == b"traceparent":
                self.traceparent = value


def _request_id(given: bytes | None) -> bytes:
    if given is not None and _REQUEST_ID.match(given):
        return given
    return ids.hex128().encode()


def _ms(seconds: float) -> bytes:
    return f"{max(seconds, 0.0) * 1000:.3f}".encode()


def _common_headers(ctx: RequestContext) -> list[tuple[bytes, bytes]]:
    return [
        (b"x-request-id", ctx.request_id.encode()),
        (b"x-gateway-overhead-ms", _ms(ctx.overhead_seconds)),
        *ctx.extra_headers,
    ]


SHUTTING_DOWN = "server_shutting_down"


async def _cut_at_shutdown(send: Send, ctx: RequestContext) -> None:
    error = ServiceUnavailable(
        "The gateway is shutting down and cut this stream short; retry the request.", code=SHUTTING_DOWN
    )
    ctx.status = error.status
    ctx.error = error
    with contextlib.suppress(Exception):  # the connection may be gone already: the record stands
        await send({"type": "http.response.body", "body": error_event(error), "more_body": False})


async def _send_error(
    send: Send,
    error: GatewayError,
    request_id: bytes,
    started: float,
    extra: list[tuple[bytes, bytes]] | None = None,
) -> None:
    body = error_body(error)
    headers = [
        *_JSON_HEADERS,
        (b"content-length", str(len(body)).encode()),
        (b"x-request-id", request_id),
        (b"x-gateway-overhead-ms", _ms(time.perf_counter() - started)),
        *(extra or []),
        *((key.encode(), value.encode()) for key, value in error.headers.items()),
    ]
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
