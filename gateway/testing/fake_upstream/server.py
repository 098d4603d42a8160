"""The fake upstream as a raw ASGI app.

It is deliberately not built on FastAPI/Starlette: in throughput benchmarks it stands in for the
model provider at several thousand requests per second, and every microsecond it spends is
charged to the gateway being measured. Routing is a dict lookup, bodies are parsed once with
orjson, and answers are pre-serialised bytes.

Besides the OpenAI/Anthropic routes it exposes a small control API under ``/_fake/`` so tests can
inject faults (error statuses, garbage bodies, cut streams, delays) and assert what the gateway
actually sent upstream (headers, body, counts).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import importlib.util
import sys
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Final

import orjson

from gateway.providers import mock_responses as mock
from gateway.testing import anthropic_answers as anthropic

__all__ = ["DEFAULT_MODELS", "FakeUpstream", "Fault", "main", "run"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

DEFAULT_MODELS: Final = (
    "gpt-4o-mini",
    "gpt-4o",
    "gpt-4.1-mini",
    "gpt-4o-mini-slow",
    "text-embedding-3-small",
    "claude-3-5-haiku-20241022",
)
SLOW_SUFFIX: Final = "-slow"
SLOW_LATENCY_MS: Final = 200.0
MODELS_CREATED: Final = 1_700_000_000

_JSON_HEADERS: Final = [(b"content-type", b"application/json")]
_SSE_HEADERS: Final = [
    (b"content-type", b"text/event-stream"),
    (b"cache-control", b"no-cache"),
]
_GARBAGE_JSON: Final = b"<html><body><h1>502 Bad Gateway</h1> this is not JSON</body></html>"
_GARBAGE_STREAM: Final = b"<html><body>upstream exploded</body></html>\nthis is not server-sent events\n"

# OpenAI error (type, code) and Anthropic error type per status, so clients map them as they would
# the real provider's (e.g. the openai SDK's RateLimitError, litellm's exception mapping).
_OPENAI_ERRORS: Final[dict[int, tuple[str, str | None]]] = {
    400: ("invalid_request_error", None),
    401: ("invalid_request_error", "invalid_api_key"),
    403: ("permission_error", None),
    404: ("invalid_request_error", "not_found"),
    405: ("invalid_request_error", "method_not_allowed"),
    408: ("timeout", None),
    409: ("invalid_request_error", "conflict"),
    413: ("invalid_request_error", "request_too_large"),
    422: ("invalid_request_error", None),
    429: ("requests", "rate_limit_exceeded"),
}
_ANTHROPIC_ERRORS: Final[dict[int, str]] = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}


@dataclass(slots=True)
class Fault:
    """One queued misbehaviour, consumed by the next matching API request (``times`` times)."""

    status: int | None = None
    retry_after: str | None = None
    delay_ms: float = 0.0
    garbage: bool = False
    disconnect_after_chunks: int | None = None
    times: int = 1
    path: str | None = None
    # Echo the credential the request carried in the error's message, as some providers do
    # ("Incorrect API key provided: ..."): what the gateway must never pass on.
    echo_key: bool = False
    # Stream this many events, then an in-band ``data: {"error": ...}`` event, and end.
    error_after_chunks: int | None = None
    # Send the status line, then drop the connection without an answer (a crashed upstream).
    close: bool = False
    echoed: str = ""  # filled in when the fault is taken (the request's credential)

    @classmethod
    def from_json(cls, raw: Any) -> Fault:
        if not isinstance(raw, dict):
            raise ValueError("each fault must be a JSON object")
        unknown = set(raw) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown fault fields: {sorted(unknown)}")
        status = raw.get("status")
        if status is not None and (not _is_int(status) or not 100 <= status <= 599):
            raise ValueError("'status' must be an HTTP status code")
        retry_after = raw.get("retry_after")
        if retry_after is not None:
            if not isinstance(retry_after, str | int | float) or isinstance(retry_after, bool):
                raise ValueError("'retry_after' must be a string")
            retry_after = str(retry_after)
        delay_ms = raw.get("delay_ms") or 0.0
        if not isinstance(delay_ms, int | float) or isinstance(delay_ms, bool) or delay_ms < 0:
            raise ValueError("'delay_ms' must be a non-negative number")
        cut = raw.get("disconnect_after_chunks")
        if cut is not None and (not _is_int(cut) or cut < 0):
            raise ValueError("'disconnect_after_chunks' must be a non-negative integer")
        times = raw.get("times", 1)
        if not _is_int(times) or times < 1:
            raise ValueError("'times' must be a positive integer")
        path = raw.get("path")
        if path is not None and not isinstance(path, str):
            raise ValueError("'path' must be a string")
        error_after = raw.get("error_after_chunks")
        if error_after is not None and (not _is_int(error_after) or error_after < 0):
            raise ValueError("'error_after_chunks' must be a non-negative integer")
        return cls(
            status=status,
            retry_after=retry_after,
            delay_ms=float(delay_ms),
            garbage=bool(raw.get("garbage", False)),
            disconnect_after_chunks=cut,
            times=times,
            path=path,
            echo_key=bool(raw.get("echo_key", False)),
            error_after_chunks=error_after,
            close=bool(raw.get("close", False)),
        )

    def matches(self, route: str) -> bool:
        return self.path is None or _normalise(self.path) == route


def _credential(scope: Scope) -> str:
    """The API key the request carried (``Authorization: Bearer`` or ``x-api-key``)."""
    for name, value in scope["headers"]:
        lowered = name.lower()
        if lowered == b"authorization":
            return str(value.decode("latin-1")).removeprefix("Bearer ")
        if lowered == b"x-api-key":
            return str(value.decode("latin-1"))
    return ""


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _normalise(path: str) -> str:
    """Map ``/v1/x`` and ``/x`` (and trailing slashes) to one route key."""
    if path.startswith("/v1/"):
        path = path[3:]
    elif path == "/v1":
        path = "/"
    return path.rstrip("/") or "/"


def _openai_error(status: int, message: str) -> dict[str, Any]:
    kind, code = _OPENAI_ERRORS.get(status, ("server_error" if status >= 500 else "invalid_request_error", None))
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


def _anthropic_error(status: int, message: str) -> dict[str, Any]:
    kind = _ANTHROPIC_ERRORS.get(status, "api_error" if status >= 500 else "invalid_request_error")
    return {"type": "error", "error": {"type": kind, "message": message}}


class _InjectedClose(Exception):
    """Raised (after the status line) to make the server drop the connection."""


class _BadRequest(Exception):
    """A request the real API would reject with 400; the message goes into the error body."""


class FakeUpstream:
    """ASGI app answering like OpenAI's (and Anthropic's) HTTP API, with test controls.

    State (faults, counters, last request) lives on the instance and is only touched from the event
    loop, so it needs no locking; run one instance per server.
    """

    def __init__(
        self,
        *,
        latency_ms: float = 0,
        stream_chunks: int = 8,
        chunk_delay_ms: float = 0,
        require_key: str | None = None,
        models: Sequence[str] | None = None,
    ) -> None:
        self.latency_ms = float(latency_ms)
        self.stream_chunks = int(stream_chunks)
        self.chunk_delay_ms = float(chunk_delay_ms)
        self.require_key = require_key
        self.models = tuple(models) if models is not None else DEFAULT_MODELS
        self.faults: list[Fault] = []
        self.requests = 0
        self.by_path: dict[str, int] = {}
        self.by_model: dict[str, int] = {}
        self._last: tuple[str, str, Any, bytes, Any] | None = None
        self._api: dict[str, tuple[str, Callable[..., Awaitable[None]]]] = {
            "/chat/completions": ("POST", self._chat),
            "/embeddings": ("POST", self._embeddings),
            "/models": ("GET", self._list_models),
            "/messages": ("POST", self._anthropic),
        }
        self._control: dict[str, tuple[str, Callable[..., Awaitable[None]]]] = {
            "/_fake/faults": ("POST", self._post_faults),
            "/_fake/reset": ("POST", self._reset),
            "/_fake/stats": ("GET", self._stats),
            "/_fake/config": ("POST", self._config),
            "/_fake/health": ("GET", self._health),
            "/health": ("GET", self._health),
        }

    # -- ASGI entry point ---------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        raw_path: str = scope["path"]
        method: str = scope["method"]
        body = await _read_body(receive)
        if body is None:  # client went away before sending the body
            return

        control = self._control.get(raw_path.rstrip("/") or "/")
        if control is not None:
            await self._dispatch_control(control, method, body, send)
            return

        route = _normalise(raw_path)
        payload, parse_error = _parse_json(body) if body else (None, None)
        self._record(scope, raw_path, body, payload)
        anthropic = route == "/messages"
        error = _anthropic_error if anthropic else _openai_error

        entry = self._api.get(route)
        if entry is None and route.startswith("/models/") and method == "GET":
            entry = ("GET", self._get_model)
        if entry is None:
            await _send_json(send, 404, error(404, f"Unknown request URL: {method} {raw_path}."))
            return
        expected_method, handler = entry
        if method != expected_method:
            await _send_json(send, 405, error(405, f"Method {method} not allowed for {raw_path}."))
            return
        if not self._authorised(scope):
            await _send_json(send, 401, error(401, "Incorrect API key provided."))
            return

        fault = self._take_fault(route)
        if fault is not None and fault.echo_key:
            fault = dataclasses.replace(fault, echoed=_credential(scope))
        delay_ms = self.latency_ms + (fault.delay_ms if fault else 0.0)
        model = payload.get("model") if isinstance(payload, dict) else None
        if isinstance(model, str) and model.endswith(SLOW_SUFFIX):
            delay_ms += SLOW_LATENCY_MS
        if delay_ms > 0:
            await asyncio.sleep(delay_ms / 1000)

        if fault is not None and fault.status is not None and fault.status >= 400:
            headers = [(b"retry-after", fault.retry_after.encode())] if fault.retry_after else []
            message = f"Injected fault: HTTP {fault.status}."
            if fault.echo_key:
                message += f" Incorrect API key provided: {fault.echoed}."
            await _send_json(send, fault.status, error(fault.status, message), headers)
            return

        streaming = isinstance(payload, dict) and payload.get("stream") is True
        if fault is not None and fault.close:
            # uvicorn closes the connection of an app that fails after its response started:
            # the client sees headers and then the connection going away, with no answer.
            headers = _SSE_HEADERS if streaming else [*_JSON_HEADERS, (b"content-length", b"4096")]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            raise _InjectedClose("injected fault: the connection is closed without an answer")
        if fault is not None and fault.garbage:
            if streaming:
                await _send_raw(send, 200, _SSE_HEADERS, _GARBAGE_STREAM)
            else:
                await _send_raw(send, 200, _JSON_HEADERS, _GARBAGE_JSON)
            return

        if method == "POST" and not isinstance(payload, dict):
            reason = parse_error or "the request body must be a JSON object"
            await _send_json(send, 400, error(400, f"We could not parse the JSON body of your request: {reason}"))
            return
        try:
            await handler(send, payload if isinstance(payload, dict) else {}, route, fault)
        except _BadRequest as exc:
            await _send_json(send, 400, error(400, str(exc)))

    # -- bookkeeping --------------------------------------------------------------------------

    def _record(self, scope: Scope, raw_path: str, body: bytes, payload: Any) -> None:
        self.requests += 1
        self.by_path[raw_path] = self.by_path.get(raw_path, 0) + 1
        model = payload.get("model") if isinstance(payload, dict) else None
        if isinstance(model, str):
            self.by_model[model] = self.by_model.get(model, 0) + 1
        # Kept raw and only decoded when someone asks for stats: this runs on every benchmark request.
        self._last = (scope["method"], raw_path, scope["headers"], body, payload)

    @property
    def last_request(self) -> dict[str, Any] | None:
        """The most recent API request: method, path, headers (lowercased names) and parsed body."""
        if self._last is None:
            return None
        method, path, raw_headers, body, payload = self._last
        headers: dict[str, str] = {}
        for name, value in raw_headers:
            key = name.decode("latin-1").lower()
            text = value.decode("latin-1")
            headers[key] = f"{headers[key]}, {text}" if key in headers else text
        return {
            "method": method,
            "path": path,
            "headers": headers,
            "body": payload if payload is not None else body.decode("utf-8", "replace"),
        }

    def _authorised(self, scope: Scope) -> bool:
        if self.require_key is None:
            return True
        bearer = b"Bearer " + self.require_key.encode()
        key = self.require_key.encode()
        for name, value in scope["headers"]:
            lowered = name.lower()
            if (lowered == b"authorization" and value == bearer) or (lowered == b"x-api-key" and value == key):
                return True
        return False

    def _take_fault(self, route: str) -> Fault | None:
        for i, fault in enumerate(self.faults):
            if fault.matches(route):
                fault.times -= 1
                if fault.times <= 0:
                    del self.faults[i]
                return fault
        return None

    def reset(self) -> None:
        """Forget faults, counters and the last request (configuration is kept)."""
        self.faults.clear()
        self.requests = 0
        self.by_path = {}
        self.by_model = {}
        self._last = None

    def stats(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "by_path": dict(self.by_path),
            "by_model": dict(self.by_model),
            "last_request": self.last_request,
            "pending_faults": [asdict(f) for f in self.faults],
        }

    def config(self) -> dict[str, Any]:
        return {
            "latency_ms": self.latency_ms,
            "stream_chunks": self.stream_chunks,
            "chunk_delay_ms": self.chunk_delay_ms,
            "require_key": self.require_key,
        }

    # -- control API --------------------------------------------------------------------------

    async def _dispatch_control(
        self, entry: tuple[str, Callable[..., Awaitable[None]]], method: str, body: bytes, send: Send
    ) -> None:
        expected_method, handler = entry
        if method != expected_method and not (method == "GET" and handler == self._config):
            await _send_json(send, 405, _openai_error(405, f"Method {method} not allowed."))
            return
        payload, parse_error = _parse_json(body) if body else (None, None)
        if parse_error is not None:
            await _send_json(send, 400, _openai_error(400, f"Invalid JSON: {parse_error}"))
            return
        try:
            await handler(send, payload, method)
        except ValueError as exc:
            await _send_json(send, 400, _openai_error(400, str(exc)))

    async def _post_faults(self, send: Send, payload: Any, method: str) -> None:
        if isinstance(payload, dict) and isinstance(payload.get("faults"), list):
            payload = payload["faults"]
        elif isinstance(payload, dict):
            payload = [payload]
        if not isinstance(payload, list):
            raise ValueError("expected a JSON list of fault objects")
        faults = [Fault.from_json(item) for item in payload]
        self.faults.extend(faults)
        await _send_json(send, 200, {"queued": len(faults), "pending": len(self.faults)})

    async def _reset(self, send: Send, payload: Any, method: str) -> None:
        self.reset()
        await _send_json(send, 200, {"ok": True})

    async def _stats(self, send: Send, payload: Any, method: str) -> None:
        await _send_json(send, 200, self.stats())

    async def _config(self, send: Send, payload: Any, method: str) -> None:
        if method == "POST":
            if not isinstance(payload, dict):
                raise ValueError("expected a JSON object")
            unknown = set(payload) - {"latency_ms", "chunk_delay_ms", "stream_chunks", "require_key"}
            if unknown:
                raise ValueError(f"unknown config fields: {sorted(unknown)}")
            for name in ("latency_ms", "chunk_delay_ms"):
                if name in payload:
                    value = payload[name]
                    if not isinstance(value, int | float) or isinstance(value, bool) or value < 0:
                        raise ValueError(f"'{name}' must be a non-negative number")
            if "stream_chunks" in payload and (not _is_int(payload["stream_chunks"]) or payload["stream_chunks"] < 1):
                raise ValueError("'stream_chunks' must be a positive integer")
            if "require_key" in payload and not isinstance(payload["require_key"], str | None):
                raise ValueError("'require_key' must be a string or null")
            self.latency_ms = float(payload.get("latency_ms", self.latency_ms))
            self.chunk_delay_ms = float(payload.get("chunk_delay_ms", self.chunk_delay_ms))
            self.stream_chunks = int(payload.get("stream_chunks", self.stream_chunks))
            self.require_key = payload.get("require_key", self.require_key)
        await _send_json(send, 200, self.config())

    async def _health(self, send: Send, payload: Any, method: str) -> None:
        await _send_json(send, 200, {"status": "ok"})

    # -- API handlers -------------------------------------------------------------------------

    async def _chat(self, send: Send, body: dict[str, Any], route: str, fault: Fault | None) -> None:
        if not isinstance(body.get("messages"), list):
            raise _BadRequest("'messages' is a required property and must be an array")
        if body.get("stream") is not True:
            await _send_json(send, 200, mock.chat_completion(body))
            return
        events = [mock.sse_event(chunk) for chunk in mock.chat_stream_chunks(body, chunks=self.stream_chunks)]
        events.append(mock.SSE_DONE)
        await self._stream(send, events, fault)

    async def _anthropic(self, send: Send, body: dict[str, Any], route: str, fault: Fault | None) -> None:
        if not isinstance(body.get("messages"), list):
            raise _BadRequest("messages: Field required")
        if body.get("stream") is not True:
            await _send_json(send, 200, anthropic.anthropic_message(body))
            return
        events = [
            anthropic.anthropic_sse_event(name, data)
            for name, data in anthropic.anthropic_stream_events(body, chunks=self.stream_chunks)
        ]
        await self._stream(send, events, fault)

    async def _embeddings(self, send: Send, body: dict[str, Any], route: str, fault: Fault | None) -> None:
        try:
            answer = mock.embeddings(body)
        except ValueError as exc:
            raise _BadRequest(str(exc)) from exc
        await _send_json(send, 200, answer)

    async def _list_models(self, send: Send, body: dict[str, Any], route: str, fault: Fault | None) -> None:
        data = [_model_object(m) for m in self.models]
        await _send_json(send, 200, {"object": "list", "data": data})

    async def _get_model(self, send: Send, body: dict[str, Any], route: str, fault: Fault | None) -> None:
        await _send_json(send, 200, _model_object(route.removeprefix("/models/")))

    async def _stream(self, send: Send, events: list[bytes], fault: Fault | None) -> None:
        """Send each event as its own body message, as a real token-by-token stream arrives.

        With ``disconnect_after_chunks`` the body is closed early, without the terminating event,
        which is how a provider stream that dies mid-answer looks to the client.
        """
        cut = fault.disconnect_after_chunks if fault is not None else None
        error_after = fault.error_after_chunks if fault is not None else None
        delay = self.chunk_delay_ms / 1000
        await send({"type": "http.response.start", "status": 200, "headers": _SSE_HEADERS})
        last = len(events) - 1
        for i, event in enumerate(events):
            if cut is not None and i >= cut:
                await send({"type": "http.response.body", "body": b"", "more_body": False})
                return
            if fault is not None and error_after is not None and i >= error_after:
                message = "The server had an error while processing your request."
                if fault.echo_key:
                    message += f" Key in use: {fault.echoed}."
                error = {"error": {"message": message, "type": "server_error", "param": None, "code": None}}
                await send({"type": "http.response.body", "body": b"data: " + orjson.dumps(error) + b"\n\n",
                            "more_body": False})
                return
            if delay > 0 and i > 0:
                await asyncio.sleep(delay)
            await send({"type": "http.response.body", "body": event, "more_body": i < last})


def _model_object(model_id: str) -> dict[str, Any]:
    return {"id": model_id, "object": "model", "created": MODELS_CREATED, "owned_by": "fake-upstream"}


async def _read_body(receive: Receive) -> bytes | None:
    message = await receive()
    if message["type"] == "http.disconnect":
        return None
    body: bytes = message.get("body", b"")
    if not message.get("more_body", False):
        return body
    parts = [body]
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        parts.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(parts)


def _parse_json(body: bytes) -> tuple[Any, str | None]:
    try:
        return orjson.loads(body), None
    except orjson.JSONDecodeError as exc:
        return None, str(exc)


async def _send_raw(send: Send, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [*headers, (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def _send_json(send: Send, status: int, payload: Any, extra_headers: Sequence[tuple[bytes, bytes]] = ()) -> None:
    await _send_raw(send, status, [*_JSON_HEADERS, *extra_headers], orjson.dumps(payload))


def _event_loop_name() -> str:
    return "uvloop" if importlib.util.find_spec("uvloop") is not None else "asyncio"


def run(host: str = "127.0.0.1", port: int = 9999, **options: Any) -> None:
    """Serve ``FakeUpstream(**options)`` until interrupted.

    The keep-alive timeout is far above uvicorn's 5 s default because pooled benchmark clients
    reuse idle connections, and a server closing one at the moment the client reuses it shows up as
    spurious "server disconnected" errors charged to the gateway.
    """
    import uvicorn

    uvicorn.run(
        FakeUpstream(**options),
        host=host,
        port=port,
        http="httptools",
        loop=_event_loop_name(),
        access_log=False,
        log_level="warning",
        lifespan="on",
        timeout_keep_alive=120,
        backlog=4096,
        server_header=False,
        date_header=False,
    )


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m gateway.testing.fake_upstream``: run the fake from the command line."""
    parser = argparse.ArgumentParser(
        prog="python -m gateway.testing.fake_upstream",
        description="Fake OpenAI-compatible (and Anthropic) upstream for tests and benchmarks.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9999)
    parser.add_argument("--latency-ms", type=float, default=0.0, help="delay before every answer")
    parser.add_argument("--stream-chunks", type=int, default=8, help="content deltas per streamed answer")
    parser.add_argument("--chunk-delay-ms", type=float, default=0.0, help="delay between streamed chunks")
    parser.add_argument("--require-key", default=None, help="reject requests without this bearer key")
    args = parser.parse_args(argv)
    print(f"fake upstream listening on http://{args.host}:{args.port}/v1", file=sys.stderr, flush=True)
    run(
        args.host,
        args.port,
        latency_ms=args.latency_ms,
        stream_chunks=args.stream_chunks,
        chunk_delay_ms=args.chunk_delay_ms,
        require_key=args.require_key,
    )
