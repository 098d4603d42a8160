"""Traces off the request path: spans built once answers have gone out, and one export task.

On the request path tracing does two things, both cheap: ``start`` gives the request its trace
id (and the ``x-gateway-trace-id`` response header), and ``record`` takes the finished request,
or drops and counts it when the bounded queue is full. ``record`` runs once the reply has been
delivered (a sink of the record stage), so nothing is built, serialised or sent before an
answer goes out. What is queued is what the span is made of (``spans.Finished``: strings and
numbers, read off the request with its data still in the CPU's caches), not the request: the
request is freed at once, not held for the collector to walk until its span is built.

When nothing waits to be built, the span is built in the loop's spare time: the next request's
upstream call builds it while that upstream works (``gateway.spare_time``), so a caller that
sends its next request at once does not wait for it. (Built when recorded, as until December
2026, the span's ~0.1 ms, with masking, landed on the next request's latency at concurrency 1:
wrk's p50 0.83-0.98 ms against 0.67-0.84 ms built in spare time, four interleaved runs.) When
requests are not reaching upstreams (cache hits), ``record`` builds the span at once; a span no
upstream call has built within ``GATHER_S`` is built by the export task.

When spans are waiting (a burst, a batch being sent), requests queue, and the export task
builds them ``GATHER_S`` later, in slices of ``BUILD_SLICE_S`` of loop time (longer while a
backlog waits), so requests running meanwhile wait a fraction of a millisecond. When more than
a batch waits, the slices are not keeping up (a saturated loop: seen at concurrency 64 once the
upstream call got cheaper, 7,800 spans of 34,000 dropped in 12 s), and each recorded request
also builds the oldest waiting span, as does each upstream call: the backlog stops growing,
and the queue's bound is left for what it is for, an export that cannot leave. (Built
a whole batch at a time, spans stalled the requests of that moment by 20-35 ms at concurrency
1; built in slices at low load too, a request waited for a whole slice at each of its turns of
the loop, which put 2 ms on the p99.)

Each span is written as a whole ``resource_spans`` entry of an OTLP ``ExportTraceServiceRequest``
(``otlp.Envelope``) and, with gzip, compressed as it is built, ``COMPRESS_CHUNK`` bytes at a
time, so that at export only the last chunk and the compressor's tail are left (compressing a
whole batch at once held the loop for 2-4 ms). A batch
leaves when full or ``flush_interval_ms`` after its first span, POSTed to each destination:
Langfuse's OTLP endpoint, any OTLP/HTTP endpoint (``otlp_endpoint``, with its headers), or both,
through the gateway's own HTTP/1.1 client, one keep-alive connection per destination
(``sender``: 0.1-0.15 ms of the loop's time a POST; a sender thread cost more, see there).
One export is in flight at a time, bounded by ``timeout_s``. A batch a destination did not take
(down, hanging, 5xx, 401) is dropped and counted for it, never retried into a growing backlog:
tracing is fail-open, an outage costs traces, not requests.

Sampling is decided in ``record`` by the team's and alias's policy (``policy``); a failed
request is always kept. A caller's W3C ``traceparent`` is read in ``start``: the request
keeps the caller's trace id, and its span names the caller's span as parent.

Why not the Langfuse SDK: it builds an OpenTelemetry SDK span per request on the request
path (measured 126 to 197 µs CPU per generation, above the 100 µs budget). The gateway sends the
same attributes the SDK would, straight to the same endpoint.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import logging
import random
import re
import time
import zlib
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Protocol

from gateway import ids, spare_time
from gateway.throttled_log import ThrottledLog
from gateway.tracing import maskers, otlp
from gateway.tracing.policy import TracePolicies, TracePolicy
from gateway.tracing.redaction import Redactor
from gateway.tracing.sender import BatchSender
from gateway.tracing.spans import Finished, PromptVersions, SpanBuilder, failed

if TYPE_CHECKING:
    from prometheus_client import Counter, Gauge

    from gateway.config.settings import TracingSettings
    from gateway.context import RequestContext

_isal_zlib: ModuleType | None
try:
    from isal import isal_zlib as _isal_zlib
except ImportError:  # pragma: no cover - platforms without an isal wheel
    _isal_zlib = None


class Compressor(Protocol):
    def compress(self, data: bytes, /) -> bytes: ...
    def flush(self, /) -> bytes: ...


def gzip_compressor() -> Compressor:
    """A gzip stream at level 1 (wbits 31: gzip's header and trailer). Intel's ISA-L deflate
    (python-isal) where its wheel is installed (x86_64, aarch64): the same format as zlib's for
    about a third of its CPU (~1.5 against ~4.5 µs a span, with a slightly better ratio);
    elsewhere zlib."""
    if _isal_zlib is not None:
        compressor: Compressor = _isal_zlib.compressobj(1, zlib.DEFLATED, 31)
        return compressor
    return zlib.compressobj(1, zlib.DEFLATED, 31)

log = logging.getLogger("gateway.tracing")

TRACES_PATH = "/api/public/otel/v1/traces"
TRACE_HEADER = b"x-gateway-trace-id"
#: Longest the exporter builds spans before it lets the event loop run other work.
BUILD_SLICE_S = 0.0005
MAX_BUILD_SLICE_S = 0.004
#: How long queued requests (those that found spans waiting) gather before the export task
#: builds them, unless a batch is already queued: several spans per wake-up instead of one per
#: request (a wake-up per span cost ~100 µs of CPU per request at concurrency 1); a span still
#: leaves within ``flush_interval_ms``.
GATHER_S = 0.02
#: Behind (more than a batch waiting), requests build spans ahead, up to this many batches in one
#: export: a built span is a few hundred compressed bytes, a waiting one a whole finished request.
BEHIND_BATCHES = 4
#: Built spans are given to the gzip compressor this many bytes at a time: each call costs the
#: compressor a fixed amount besides its input (ISA-L copies part of its window: ~20,000
#: instructions of memcpy a span when called span by span, callgrind); a chunk is 10-20 µs of
#: loop time.
COMPRESS_CHUNK = 16 * 1024
#: At most one warning per this many seconds about traces being dropped.
LOG_EVERY_S = 30.0
#: ``version-traceid-parentid-flags`` (W3C Trace Context, version 00 and the future ones).
TRACEPARENT = re.compile(r"^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(?:-.*)?$")


@dataclass(frozen=True)
class Destination:
    """Where spans go: a name for metrics and logs, the traces URL and the headers to send."""

    name: str  # "langfuse" or "otlp"
    url: str
    headers: dict[str, str]


def destinations(settings: TracingSettings) -> list[Destination]:
    found: list[Destination] = []
    if settings.langfuse:
        credentials = f"{settings.public_key}:{settings.secret_key.get_secret_value()}"
        found.append(Destination("langfuse", settings.langfuse_url + TRACES_PATH, {
            "Authorization": "Basic " + base64.b64encode(credentials.encode()).decode(),
            # Langfuse's real-time ingestion path, which its own SDKs ask for.
            "x-langfuse-ingestion-version": "4",
        }))
    if settings.otlp_endpoint:
        headers = {name: value.get_secret_value() for name, value in settings.otlp_headers.items()}
        found.append(Destination("otlp", settings.otlp_endpoint, headers))
    return found


def parse_traceparent(header: str) -> tuple[str, str] | None:
    """(trace id, parent span id) from a W3C ``traceparent``, or None when it is not valid."""
    match = TRACEPARENT.match(header.strip().lower())
    if match is None:
        return None
    version, trace_id, span_id, _ = match.groups()
    if version == "ff" or (version == "00" and len(header.strip()) != 55):
        return None
    if trace_id == "0" * 32 or span_id == "0" * 16:
        return None
    return trace_id, span_id


def exporter_for(
    settings: TracingSettings, *, dropped: Counter, exported: Counter, prompt_versions: PromptVersions | None = None,
    depth: Gauge | None = None,
) -> TraceExporter:
    """An exporter with the policies, maskers and hash key ``settings`` name (task not started).

    ``dropped`` is labelled (reason, destination), ``exported`` (destination); ``depth`` is set
    to the requests waiting for export, once per build slice and per export (not per request).
    """
    policies = TracePolicies(TracePolicy(settings.sample_rate, settings.content))
    redactor = Redactor(maskers.load(settings.maskers, settings.extra_maskers),
                        hash_key=settings.hash_key.get_secret_value().encode())
    builder = SpanBuilder(environment=settings.environment, redactor=redactor, policies=policies,
                          prompt_versions=prompt_versions)
    return TraceExporter(settings, builder=builder, policies=policies, dropped=dropped, exported=exported,
                         depth=depth)


class TraceExporter:
    """The tracing feature's request-path hooks (``start``, ``record``) and its export task."""

    def __init__(
        self,
        settings: TracingSettings,
        *,
        builder: SpanBuilder,
        policies: TracePolicies,
        dropped: Counter,
        exported: Counter,
        service_name: str = "llm-gateway",
        depth: Gauge | None = None,
    ) -> None:
        self.settings = settings
        self.builder = builder
        self.policies = policies
        self.destinations = destinations(settings)
        self.endpoint = ", ".join(destination.url for destination in self.destinations)
        # Recorded requests, as what their spans are made of (not the requests themselves).
        self._queue: collections.deque[Finished] = collections.deque()
        # The batch being built: how many spans, and its payload so far (the spans' envelope
        # entries, or what the compressor has given back of them).
        self._built = 0
        self._parts: list[bytes] = []
        self._gzip: Compressor | None = None
        # With gzip, built entries not yet given to the compressor (COMPRESS_CHUNK bytes at a time).
        self._uncompressed: list[bytes] = []
        self._uncompressed_size = 0
        self._flush_timer: asyncio.TimerHandle | None = None
        # Spare time (see the module's docstring): whether an upstream call ran since the last
        # recorded request, and the check that no deferred span waits longer than GATHER_S.
        self._spare_seen = False
        self._spare_check: asyncio.TimerHandle | None = None
        self._spare_watched: Finished | None = None  # the oldest at the last check
        self._max = settings.queue_size
        self._batch = settings.batch_size
        names = [destination.name for destination in self.destinations]
        self._dropped_full = [dropped.labels("queue_full", name) for name in names]
        self._dropped_export = {name: dropped.labels("export_failed", name) for name in names}
        self._dropped_shutdown = [dropped.labels("shutdown", name) for name in names]
        self._exported = {name: exported.labels(name) for name in names}
        self._depth = depth
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._senders: dict[str, BatchSender] = {}  # by destination name, made at its first batch
        self._loss_log = ThrottledLog(log, every_s=LOG_EVERY_S)
        self._unsent = 0  # lost to a stop (counted under reason "shutdown")
        self._envelope = otlp.Envelope(
            [("service.name", service_name), ("deployment.environment", settings.environment)], "llm-gateway"
        )

    # -- on the request path -----------------------------------------------------------------

    def start(self, ctx: RequestContext) -> None:
        """Give the request its trace id (the caller's, with a valid ``traceparent``) and say it
        in the response headers."""
        if ctx.trace_id is None:
            joined = parse_traceparent(ctx.traceparent) if ctx.traceparent else None
            if joined is not None:
                ctx.trace_id, ctx.parent_span_id = joined
            else:
                ctx.trace_id = ids.hex128()
        ctx.extra_headers.append((TRACE_HEADER, ctx.trace_id.encode()))

    def record(self, ctx: RequestContext) -> None:
        """Queue the finished request (a request sink: never blocks, never raises on a full queue)."""
        if ctx.trace_id is None:
            return
        policy = self.policies.of(ctx)
        rate = policy.sample_rate
        if rate < 1.0 and not failed(ctx) and random.random() >= rate:
            return
        queue = self._queue
        if len(queue) + self._built >= self._max:
            for counter in self._dropped_full:
                counter.inc()
            self._lost(1)
            return
        try:
            finished = self.builder.take(ctx, time.time_ns(), policy.content)
        except Exception:
            log.exception("could not read a request for its trace span; dropped", extra={"request_id": ctx.request_id})
            for counter in self._dropped_export.values():
                counter.inc()
            return
        queue.append(finished)
        if self._task is not None:
            if len(queue) == 1 and self._built < self._batch:
                if self._spare_seen:
                    # Nothing else waits, and requests are reaching upstreams: the next one's
                    # upstream call builds this span while that upstream works (``in_spare_time``).
                    self._spare_seen = False
                    if self._spare_check is None:
                        self._spare_watched = queue[0]
                        self._spare_check = asyncio.get_running_loop().call_later(GATHER_S, self._check_spare)
                    return
                # Nothing waits to be built, and no upstream call since the last request (cache
                # hits): build this span now. Its answer has gone out (sinks run once the reply
                # is delivered), and one span costs the next request at most its own build, where
                # a slice of the background task cost it up to BUILD_SLICE_S at each of its turns
                # of the loop.
                self._build_next()
                if self._built < self._batch:
                    return  # the batch's flush timer sends it
            elif len(queue) > self._batch and self._built < BEHIND_BATCHES * self._batch:
                # More than a batch waits: the export task's slices are not keeping up (the loop
                # is saturated). This request builds the oldest waiting span, so the backlog
                # stops growing instead of filling the queue, holding up to queue_size finished
                # requests in memory, and dropping spans. While an export is in flight (its POST
                # slows down on a saturated machine too), the spans built meanwhile, compressed,
                # make the next export a larger one, up to BEHIND_BATCHES batches.
                self._build_next()
        if not self._wake.is_set():
            self._wake.set()

    @property
    def queued(self) -> int:
        """Requests recorded and not yet exported (built or not)."""
        return len(self._queue) + self._built

    # -- in the background -------------------------------------------------------------------

    def start_task(self) -> None:
        """Start exporting (inside the running event loop)."""
        self._task = asyncio.get_running_loop().create_task(self._run(), name="trace-exporter")
        spare_time.add(self.in_spare_time)

    def in_spare_time(self) -> None:
        """Build the oldest waiting span, if any (a ``spare_time`` job: an upstream is working)."""
        if self._task is None or self._task.done():  # not started, or stopped without close()
            return
        self._spare_seen = True
        if self._queue and self._built < self._batch:
            self._build_next()
            if self._built >= self._batch and not self._wake.is_set():
                self._wake.set()  # a full batch: the export task sends it

    def _check_spare(self) -> None:
        """A span left for spare time that is still the oldest waiting a whole ``GATHER_S`` later
        (no upstream call came): the export task builds it. Re-armed while newer spans wait, so
        a steady stream of requests costs a timer per ``GATHER_S``, not a wake-up of the task.
        (The entry itself is compared, not its time: the queue holds wall-clock times, which
        may step.)"""
        self._spare_check = None
        if not self._queue or self._task is None:
            self._spare_watched = None
            return
        oldest = self._queue[0]
        if oldest is self._spare_watched:
            self._spare_watched = None
            if not self._wake.is_set():
                self._wake.set()
        else:
            self._spare_watched = oldest
            self._spare_check = asyncio.get_running_loop().call_later(GATHER_S, self._check_spare)

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            if len(self._queue) < self._batch and self._built < self._batch:
                await asyncio.sleep(GATHER_S)
            self._wake.clear()
            await self._build_batch()
            if self._depth is not None:
                self._depth.set(self.queued)
            if self._built >= self._batch or (self._built and self._flush_timer is None):
                await self.export_batch()
                if self._queue or self._built:
                    self._wake.set()

    async def _build_batch(self) -> None:
        """Build queued spans until a batch is ready or the queue is empty, a slice per turn.

        A slice of spans per turn of the loop, so requests running meanwhile wait for a fraction
        of a millisecond. The slice grows with the backlog (a batch more queued, one more
        BUILD_SLICE_S, up to MAX_BUILD_SLICE_S): under load a loop turn is long, and a fixed
        0.5 ms let the queue fill and spans drop at concurrency 64.
        """
        while self._queue and self._built < self._batch:
            slice_s = min(BUILD_SLICE_S * (1 + len(self._queue) // self._batch), MAX_BUILD_SLICE_S)
            until = time.perf_counter() + slice_s
            while self._queue and self._built < self._batch and time.perf_counter() < until:
                self._build_next()
            await asyncio.sleep(0)

    def _build_next(self) -> None:
        """Build the oldest queued request's span (a failure is logged and counted as dropped)."""
        finished = self._queue.popleft()
        try:
            entry = self._envelope.entry(self.builder.encode(finished))
        except Exception:
            log.exception("could not build a trace span; dropped", extra={"request_id": finished.request_id})
            for counter in self._dropped_export.values():
                counter.inc()
            return
        if not self._built and self._flush_timer is None:
            # The batch's first span: it leaves within flush_interval_ms, full or not.
            self._flush_timer = asyncio.get_running_loop().call_later(
                self.settings.flush_interval_ms / 1000, self._flush_due
            )
        self._built += 1
        if self.settings.compression == "gzip":
            # Compressed as built, COMPRESS_CHUNK bytes at a time: at export only the last chunk
            # and the compressor's tail are left.
            self._uncompressed.append(entry)
            self._uncompressed_size += len(entry)
            if self._uncompressed_size >= COMPRESS_CHUNK:
                self._compress_built()
            return
        self._parts.append(entry)

    def _compress_built(self) -> None:
        """Give the entries built since the last call to the batch's compressor."""
        if self._gzip is None:
            self._gzip = gzip_compressor()
        compressed = self._gzip.compress(b"".join(self._uncompressed))
        self._uncompressed, self._uncompressed_size = [], 0
        if compressed:  # else held in the compressor's window
            self._parts.append(compressed)

    def _flush_due(self) -> None:
        self._flush_timer = None
        self._wake.set()

    async def export_batch(self) -> bool:
        """Send up to one batch (building what it needs from the queue); False if a destination
        did not take it (dropped)."""
        await self._build_batch()
        taken, parts, compressor, uncompressed = self._built, self._parts, self._gzip, self._uncompressed
        self._built, self._parts, self._gzip = 0, [], None
        self._uncompressed, self._uncompressed_size = [], 0
        if self._depth is not None:
            self._depth.set(self.queued)
        if self._flush_timer is not None:
            self._flush_timer.cancel()
            self._flush_timer = None
        if not taken:
            return True
        try:
            if uncompressed:  # the last chunk
                compressor = compressor or gzip_compressor()
                parts.append(compressor.compress(b"".join(uncompressed)))
            if compressor is not None:
                parts.append(compressor.flush())
            payload = b"".join(parts)
        except Exception:
            log.exception("could not encode traces; dropped", extra={"spans": taken})
            for counter in self._dropped_export.values():
                counter.inc(taken)
            return False
        try:
            errors = await asyncio.gather(*(self._post(destination, payload) for destination in self.destinations))
        except asyncio.CancelledError:  # stopped mid-export: the batch is lost, say so
            for counter in self._dropped_shutdown:
                counter.inc(taken)
            self._unsent += taken
            raise
        delivered = True
        for destination, error in zip(self.destinations, errors, strict=True):
            if error is None:
                self._exported[destination.name].inc(taken)
            else:
                delivered = False
                self._dropped_export[destination.name].inc(taken)
                self._lost(taken, f"{destination.name}: {error}")
        return delivered

    async def _post(self, destination: Destination, payload: bytes) -> str | None:
        """POST one payload to one destination through its sender; None when it took it,
        else why not."""
        sender = self._senders.get(destination.name)
        if sender is None:
            sender = self._senders[destination.name] = BatchSender(destination.name, timeout_s=self.settings.timeout_s)
        headers = {**destination.headers, "Content-Type": "application/x-protobuf"}
        if self.settings.compression == "gzip":
            headers["Content-Encoding"] = "gzip"
        return await sender.post(destination.url, headers, payload)

    def _lost(self, count: int, reason: str = "the queue is full") -> None:
        """Log dropped traces at a bounded rate (the counter has the exact numbers)."""
        self._loss_log.log("traces dropped: %s", reason, count=count, endpoint=self.endpoint)

    async def close(self) -> None:
        """Stop the task, send what is queued within ``shutdown_timeout_s``, count the rest."""
        spare_time.remove(self.in_spare_time)
        if self._spare_check is not None:
            self._spare_check.cancel()
            self._spare_check = None
        self._spare_watched = None
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._flush_timer is not None:
            self._flush_timer.cancel()
            self._flush_timer = None
        deadline = time.monotonic() + self.settings.shutdown_timeout_s
        try:
            while self.queued and time.monotonic() < deadline:
                remaining = deadline - time.monotonic()
                try:
                    ok = await asyncio.wait_for(self.export_batch(), max(remaining, 0.001))
                except TimeoutError:
                    ok = False
                if not ok:
                    break  # Langfuse is not taking them: do not spend the bound retrying
        finally:
            left = self.queued
            if left:
                for counter in self._dropped_shutdown:
                    counter.inc(left)
                self._unsent += left
                self._queue.clear()
                self._built, self._parts, self._gzip = 0, [], None
                self._uncompressed, self._uncompressed_size = [], 0
            if self._unsent:
                log.warning("traces not sent at shutdown", extra={"dropped": self._unsent})
            for sender in self._senders.values():
                await sender.close()
