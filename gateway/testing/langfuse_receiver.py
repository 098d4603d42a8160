"""A local stand-in for Langfuse, for tests and benchmarks: it records what a Langfuse server got.

A real Langfuse server cannot run where the tests run, so this implements the endpoints the
gateway (and the official SDK) call, and keeps everything they sent:

- ``POST /api/public/otel/v1/traces``: OTLP/HTTP protobuf, possibly gzip-compressed, decoded
  with the official OpenTelemetry protobuf definitions (``opentelemetry-proto``). The raw
  payloads are kept *decompressed* (``raw``), so a test can search every byte that arrived
  (no e-mail address, no API key);
- prompt management: ``POST /api/public/v2/prompts`` (a new version, numbered per name as
  Langfuse does), ``GET /api/public/v2/prompts/{name}``, and
  ``PATCH /api/public/v2/prompts/{name}/versions/{version}`` (labels);
- ``POST /api/public/scores`` (basic auth, like the traces; ``traceId``, ``name`` and ``value``
  required), kept as posted (``scores(name)``);
- ``GET /api/public/v2/scores`` (and the older ``GET /api/public/scores``, same answer): the
  scores of the project, filtered by ``traceId``, ``name`` and ``source``, paged by ``page`` (from
  1) and ``limit`` as Langfuse pages them (``{"data": [...], "meta": {"page", "limit",
  "totalItems", "totalPages"}}``). It lists the posted scores (``source`` ``API``) and those a
  test put there with :meth:`LangfuseReceiver.add_score`, as if Langfuse's evaluators had
  produced them (``source`` ``EVAL``). Each query is kept (``score_reads()``).

Failure modes, switched at run time with :meth:`LangfuseReceiver.set_mode`: ``normal``,
``error`` (every call answers 500), ``hang`` (connections are accepted, requests never
answered) and ``stopped`` (nothing listens on the port; ``normal`` listens again, same port).

It runs its own event loop in a daemon thread, so a synchronous test can start it beside a
gateway process::

    with LangfuseReceiver() as receiver:
        ...  # point tracing.host at receiver.url
        spans = receiver.spans()
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import gzip
import math
import os
import socket
import threading
import zlib
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import orjson
from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

Mode = Literal["normal", "error", "hang", "stopped"]
TRACES_PATH = "/api/public/otel/v1/traces"


@dataclass(frozen=True)
class ReceivedSpan:
    """One span as Langfuse would read it: ids in hex, attributes as plain Python values."""

    trace_id: str
    span_id: str
    parent_span_id: str
    name: str
    start_ns: int
    end_ns: int
    status_code: int  # 0 unset, 1 ok, 2 error
    status_message: str
    attributes: dict[str, Any]
    resource: dict[str, Any]
    scope: str

    def json(self, key: str) -> Any:
        """An attribute holding JSON (input, output, usage and cost details), decoded."""
        value = self.attributes.get(key)
        return None if value is None else orjson.loads(value)

    @property
    def metadata(self) -> dict[str, Any]:
        """The observation's metadata (``langfuse.observation.metadata.*``), by its own names."""
        prefix = "langfuse.observation.metadata."
        return {key[len(prefix):]: value for key, value in self.attributes.items() if key.startswith(prefix)}


@dataclass
class Call:
    """A non-trace call: method, path, decoded JSON body (if any) and the auth header."""

    method: str
    path: str
    body: Any
    authorization: str | None


@dataclass
class _Store:
    raw: list[bytes] = field(default_factory=list)  # decompressed OTLP payloads
    requests: list[ExportTraceServiceRequest] = field(default_factory=list)
    authorizations: list[str | None] = field(default_factory=list)
    calls: list[Call] = field(default_factory=list)
    prompts: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    scores: list[Any] = field(default_factory=list)
    evaluator_scores: list[dict[str, Any]] = field(default_factory=list)  # put there by add_score
    score_reads: list[dict[str, str]] = field(default_factory=list)  # the query of each GET
    trace_posts: int = 0  # every POST to the traces endpoint, answered or not


def _value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [_value(item) for item in value.array_value.values]
    if kind == "kvlist_value":
        return {item.key: _value(item.value) for item in value.kvlist_value.values}
    return getattr(value, kind)


def _attributes(items: Any) -> dict[str, Any]:
    return {item.key: _value(item.value) for item in items}


class LangfuseReceiver:
    def __init__(
        self, *, public_key: str = "pk-lf-test", secret_key: str = "sk-lf-test", keep: bool = True,
        cpus: set[int] | None = None,
    ) -> None:
        self.public_key = public_key
        self.secret_key = secret_key
        # False: decode and count spans, keep nothing (a benchmark's hours of traces in bounded memory).
        self.keep = keep
        # The cores the receiver's thread may run on: a benchmark keeps it off the gateway's core,
        # as Langfuse would be (decoding a batch of 256 spans holds a core for a millisecond or two).
        self._cpus = cpus
        self._span_count = 0
        self.mode: Mode = "normal"
        self._store = _Store()
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._site: web.SockSite | None = None
        self._release = asyncio.Event()  # set to let hanging handlers go (at stop)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        self.port = int(sock.getsockname()[1])
        sock.close()
        self.url = f"http://127.0.0.1:{self.port}"

    # -- life cycle ------------------------------------------------------------------------

    def start(self) -> LangfuseReceiver:
        self._thread = threading.Thread(target=self._serve, name="langfuse-receiver", daemon=True)
        self._thread.start()
        self._call(self._start())
        return self

    def _serve(self) -> None:
        if self._cpus is not None:
            with contextlib.suppress(OSError, AttributeError):  # no such core, or not Linux: anywhere
                os.sched_setaffinity(0, self._cpus)  # 0: this thread only
        self._loop.run_forever()

    def stop(self) -> None:
        if self._thread is None:
            return
        self._call(self._shutdown())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        self._thread = None
        self._loop.close()

    def __enter__(self) -> LangfuseReceiver:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def set_mode(self, mode: Mode) -> None:
        """Switch behaviour; ``stopped`` closes the port, any other mode opens it again."""
        self._call(self._set_mode(mode))

    def _call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=10)

    async def _start(self) -> None:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post(TRACES_PATH, self._traces)
        app.router.add_post("/api/public/v2/prompts", self._create_prompt)
        app.router.add_get("/api/public/v2/prompts/{name}", self._get_prompt)
        app.router.add_patch("/api/public/v2/prompts/{name}/versions/{version}", self._update_labels)
        app.router.add_post("/api/public/scores", self._score)
        app.router.add_get("/api/public/scores", self._list_scores)
        app.router.add_get("/api/public/v2/scores", self._list_scores)
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
        await self._runner.setup()
        await self._listen()

    async def _listen(self) -> None:
        assert self._runner is not None
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self.port))
        self._site = web.SockSite(self._runner, sock, shutdown_timeout=0.5)
        await self._site.start()

    async def _set_mode(self, mode: Mode) -> None:
        previous, self.mode = self.mode, mode
        if mode == "stopped" and self._site is not None:
            self._release.set()
            await self._site.stop()
            self._site = None
        elif mode != "stopped" and previous == "stopped":
            self._release = asyncio.Event()
            await self._listen()
        if mode != "hang":
            self._release.set()
            self._release = asyncio.Event()

    async def _shutdown(self) -> None:
        self._release.set()
        if self._runner is not None:
            await self._runner.cleanup()

    # -- what was received -------------------------------------------------------------------

    def raw(self) -> list[bytes]:
        """Every OTLP payload received, decompressed (for byte searches)."""
        with self._lock:
            return list(self._store.raw)

    def authorizations(self) -> list[str | None]:
        with self._lock:
            return list(self._store.authorizations)

    @property
    def span_count(self) -> int:
        """Spans received and accepted (counted whether or not payloads are kept)."""
        with self._lock:
            return self._span_count

    @property
    def trace_posts(self) -> int:
        with self._lock:
            return self._store.trace_posts

    def spans(self) -> list[ReceivedSpan]:
        """Every span received and accepted, in arrival order."""
        with self._lock:
            requests = list(self._store.requests)
        found: list[ReceivedSpan] = []
        for request in requests:
            for resource_spans in request.resource_spans:
                resource = _attributes(resource_spans.resource.attributes)
                for scope_spans in resource_spans.scope_spans:
                    for span in scope_spans.spans:
                        found.append(
                            ReceivedSpan(
                                trace_id=span.trace_id.hex(),
                                span_id=span.span_id.hex(),
                                parent_span_id=span.parent_span_id.hex(),
                                name=span.name,
                                start_ns=span.start_time_unix_nano,
                                end_ns=span.end_time_unix_nano,
                                status_code=span.status.code,
                                status_message=span.status.message,
                                attributes=_attributes(span.attributes),
                                resource=resource,
                                scope=scope_spans.scope.name,
                            )
                        )
        return found

    def calls(self) -> list[Call]:
        with self._lock:
            return list(self._store.calls)

    def prompts(self, name: str) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(version) for version in self._store.prompts.get(name, [])]

    def scores(self, name: str | None = None) -> list[Any]:
        """Scores posted to ``/api/public/scores`` (as Langfuse takes them), optionally by name."""
        with self._lock:
            return [score for score in self._store.scores if name is None or score.get("name") == name]

    def add_score(
        self,
        trace_id: str,
        name: str,
        value: Any,
        *,
        source: str = "EVAL",
        score_id: str | None = None,
        data_type: str = "NUMERIC",
        comment: str | None = None,
    ) -> str:
        """A score on ``trace_id`` as if Langfuse's own evaluator produced it (listed by GET
        scores, never by ``scores()``); returns its id. Thread-safe: a test adds them while a
        gateway pulls."""
        with self._lock:
            found = score_id or f"eval-{len(self._store.evaluator_scores) + 1}"
            self._store.evaluator_scores.append(
                {
                    "id": found,
                    "traceId": trace_id,
                    "name": name,
                    "value": value,
                    "source": source,
                    "dataType": data_type,
                    "comment": comment,
                    "timestamp": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
                    "environment": "default",
                }
            )
        return found

    def score_reads(self) -> list[dict[str, str]]:
        """The query of every GET of the scores (in arrival order)."""
        with self._lock:
            return [dict(query) for query in self._store.score_reads]

    def clear(self) -> None:
        with self._lock:
            self._store = _Store()

    # -- handlers ----------------------------------------------------------------------------

    async def _gate(self, request: web.Request) -> web.Response | None:
        """What the mode says to answer instead of handling the call (or None to handle it)."""
        if self.mode == "stopped":
            # A keep-alive connection from before the stop: cut it, as a dead server would.
            if request.transport is not None:
                request.transport.abort()
            raise web.HTTPServiceUnavailable()
        if self.mode == "hang":
            await self._release.wait()  # until the mode changes or the receiver stops
            raise web.HTTPServiceUnavailable()
        if self.mode == "error":
            return web.Response(status=500, text="receiver told to fail")
        return None

    def _authorized(self, request: web.Request) -> bool:
        expected = base64.b64encode(f"{self.public_key}:{self.secret_key}".encode()).decode()
        return request.headers.get("Authorization") == f"Basic {expected}"

    async def _traces(self, request: web.Request) -> web.Response:
        with self._lock:
            self._store.trace_posts += 1
        gated = await self._gate(request)
        if gated is not None:
            return gated
        if not self._authorized(request):
            return web.Response(status=401, text="bad credentials")
        # aiohttp already inflates gzip and deflate bodies it reads; inflate here only what
        # arrives still compressed, so ``raw`` always holds the decompressed bytes.
        body = await request.read()
        encoding = request.headers.get("Content-Encoding", "").lower()
        if encoding == "gzip" and body[:2] == b"\x1f\x8b":
            body = gzip.decompress(body)
        elif encoding == "deflate" and body[:1] == b"\x78":
            body = zlib.decompress(body)
        elif encoding not in ("", "identity", "gzip", "deflate"):
            return web.Response(status=415, text=f"unsupported encoding {encoding}")
        if request.content_type != "application/x-protobuf":
            return web.Response(status=415, text="OTLP/HTTP protobuf expected")
        decoded = ExportTraceServiceRequest()
        decoded.ParseFromString(body)
        count = sum(len(scope.spans) for resource in decoded.resource_spans for scope in resource.scope_spans)
        with self._lock:
            self._span_count += count
            if self.keep:
                self._store.raw.append(body)
                self._store.requests.append(decoded)
                self._store.authorizations.append(request.headers.get("Authorization"))
        return web.Response(
            body=ExportTraceServiceResponse().SerializeToString(), content_type="application/x-protobuf"
        )

    async def _json_call(self, request: web.Request) -> Any:
        body = orjson.loads(await request.read()) if request.can_read_body else None
        with self._lock:
            self._store.calls.append(
                Call(request.method, request.path, body, request.headers.get("Authorization"))
            )
        return body

    async def _create_prompt(self, request: web.Request) -> web.Response:
        gated = await self._gate(request)
        if gated is not None:
            return gated
        if not self._authorized(request):
            return web.Response(status=401)
        body = await self._json_call(request)
        with self._lock:
            versions = self._store.prompts.setdefault(body["name"], [])
            labels = list(body.get("labels") or [])
            for earlier in versions:  # a label names one version at a time
                earlier["labels"] = [label for label in earlier["labels"] if label not in labels]
            version = {**body, "version": len(versions) + 1, "labels": [*labels, "latest"]}
            for earlier in versions:
                earlier["labels"] = [label for label in earlier["labels"] if label != "latest"]
            versions.append(version)
        return web.json_response(version)

    async def _get_prompt(self, request: web.Request) -> web.Response:
        gated = await self._gate(request)
        if gated is not None:
            return gated
        await self._json_call(request)
        name = request.match_info["name"]
        with self._lock:
            versions = self._store.prompts.get(name, [])
            wanted = request.query.get("version")
            label = request.query.get("label", "production")
            found = [
                v for v in versions
                if (str(v["version"]) == wanted if wanted else label in v["labels"])
            ]
        if not found:
            return web.json_response({"message": "prompt not found"}, status=404)
        return web.json_response(found[-1])

    async def _update_labels(self, request: web.Request) -> web.Response:
        gated = await self._gate(request)
        if gated is not None:
            return gated
        body = await self._json_call(request)
        name, number = request.match_info["name"], int(request.match_info["version"])
        labels = list((body or {}).get("newLabels") or [])
        with self._lock:
            versions = self._store.prompts.get(name, [])
            target = next((v for v in versions if v["version"] == number), None)
            if target is None:
                return web.json_response({"message": "version not found"}, status=404)
            for other in versions:
                other["labels"] = [label for label in other["labels"] if label not in labels]
            target["labels"] = sorted({*target["labels"], *labels})
            answer = dict(target)
        return web.json_response(answer)

    async def _score(self, request: web.Request) -> web.Response:
        gated = await self._gate(request)
        if gated is not None:
            return gated
        if not self._authorized(request):
            return web.json_response({"message": "bad credentials"}, status=401)
        body = await self._json_call(request)
        if not isinstance(body, dict) or not body.get("traceId") or not body.get("name") or "value" not in body:
            return web.json_response({"message": "traceId, name and value are required"}, status=400)
        with self._lock:
            self._store.scores.append(body)
            number = len(self._store.scores)
        return web.json_response({"id": f"score-{number}"})

    async def _list_scores(self, request: web.Request) -> web.Response:
        gated = await self._gate(request)
        if gated is not None:
            return gated
        if not self._authorized(request):
            return web.json_response({"message": "bad credentials"}, status=401)
        query = dict(request.query)
        try:
            page, limit = int(query.get("page", "1")), int(query.get("limit", "50"))
        except ValueError:
            return web.json_response({"message": "page and limit are integers"}, status=400)
        if page < 1 or not 1 <= limit <= 100:
            return web.json_response({"message": "page >= 1, 1 <= limit <= 100"}, status=400)
        with self._lock:
            self._store.score_reads.append(query)
            posted = [
                {
                    "id": body.get("id") or f"score-{number}",
                    "traceId": body["traceId"],
                    "name": body["name"],
                    "value": body["value"],
                    "source": "API",
                    "dataType": body.get("dataType", "NUMERIC"),
                    "comment": body.get("comment"),
                    "environment": body.get("environment", "default"),
                }
                for number, body in enumerate(self._store.scores, 1)
            ]
            listed = [*posted, *(dict(score) for score in self._store.evaluator_scores)]
        wanted = {key: query[key] for key in ("traceId", "name", "source") if key in query}
        listed = [score for score in listed if all(score.get(key) == value for key, value in wanted.items())]
        total = len(listed)
        return web.json_response(
            {
                "data": listed[(page - 1) * limit : page * limit],
                "meta": {"page": page, "limit": limit, "totalItems": total, "totalPages": math.ceil(total / limit)},
            }
        )
