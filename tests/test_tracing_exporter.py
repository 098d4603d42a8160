"""The tracing exporter's request-path hooks and its bounds, in process (no gateway, no Langfuse)."""

from __future__ import annotations

import time

import orjson
import pytest
from prometheus_client import CollectorRegistry, Counter

from benchmarks.servers import stage_catalog
from gateway.config.settings import Settings, TracingSettings
from gateway.context import Endpoint, RequestContext
from gateway.errors import InvalidRequest
from gateway.tracing import build_tracing
from gateway.tracing.exporter import GATHER_S, TRACE_HEADER, TraceExporter, destinations, exporter_for
from support.servers import free_port

CATALOG = stage_catalog("t", {})


def _exporter(**settings: object) -> tuple[TraceExporter, CollectorRegistry]:
    registry = CollectorRegistry()
    config = TracingSettings.model_validate(
        {"host": f"http://127.0.0.1:{free_port()}", "public_key": "pk-lf-1", "secret_key": "sk-lf-1", **settings}
    )
    exporter = exporter_for(
        config, dropped=Counter("dropped", "d", ("reason", "destination"), registry=registry),
        exported=Counter("exported", "e", ("destination",), registry=registry),
    )
    return exporter, registry


def _ctx(n: int = 0) -> RequestContext:
    return RequestContext(request_id=f"r{n}", endpoint=Endpoint.CHAT, raw_body=b"{}", authorization=None,
                          catalog=CATALOG)


def _answered_ctx(n: int) -> RequestContext:
    """A finished chat request with a body, an answer and usage: what a real one holds."""
    from gateway.answer import Answer
    from gateway.context import Usage

    ctx = _ctx(n)
    ctx.body = {"model": "m", "messages": [{"role": "user", "content": f"question {n}"}], "temperature": 0.2}
    answer = {"choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "yes"}}]}
    ctx.answer = Answer.of_json(200, orjson.dumps(answer), None)
    ctx.usage = Usage(3, 1)
    return ctx


def _assert_holds_no_request(held: object, ctx: RequestContext) -> None:
    """Nothing reachable from ``held`` is ``ctx``, its body or its answer: a request waiting for
    its span is freed as soon as it is recorded (its messages excepted, which the span sends)."""
    import gc
    import types

    from gateway.answer import Answer
    from gateway.tracing.spans import Finished

    assert isinstance(held, Finished)
    seen: set[int] = set()
    pending: list[object] = [held]
    while pending:
        item = pending.pop()
        if id(item) in seen:
            continue
        seen.add(id(item))
        assert item is not ctx and item is not ctx.body and not isinstance(item, RequestContext | Answer), item
        if not isinstance(item, type | types.ModuleType | types.FunctionType):  # code, not data
            pending.extend(gc.get_referents(item))


def _finish(exporter: TraceExporter, ctx: RequestContext) -> None:
    """What the record stage does with a request: its trace id as it starts, then, finished, to
    the exporter."""
    exporter.start(ctx)
    exporter.record(ctx)


def _spans(payload: bytes) -> list[object]:
    """The spans of one POSTed payload, decoded with the official definitions, as Langfuse would."""
    import gzip

    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    request = ExportTraceServiceRequest()
    request.ParseFromString(gzip.decompress(payload) if payload[:2] == b"\x1f\x8b" else payload)
    return [span for resource in request.resource_spans for scope in resource.scope_spans for span in scope.spans]


def _capture_posts(exporter: TraceExporter) -> list[bytes]:
    """The payloads ``exporter`` posts from now on, kept instead of sent (each taken)."""
    sent: list[bytes] = []

    async def post(destination: object, payload: bytes) -> str | None:
        sent.append(payload)
        return None

    exporter._post = post  # type: ignore[method-assign]
    return sent


async def _until_built(exporter: TraceExporter, seconds: float = 5.0) -> None:
    """Wait (at most ``seconds``) until no recorded request waits for its span to be built."""
    import asyncio

    for _ in range(int(seconds / 0.005)):
        if not exporter._queue:
            return
        await asyncio.sleep(0.005)


def _dropped(registry: CollectorRegistry, reason: str) -> float:
    return registry.get_sample_value("dropped_total", {"reason": reason, "destination": "langfuse"}) or 0.0


def test_off_without_host_and_keys() -> None:
    assert build_tracing(Settings().tracing, CollectorRegistry()) is None
    assert not TracingSettings(host="http://x", public_key="pk").enabled


def test_langfuse_by_either_url_an_otlp_endpoint_alone_or_both() -> None:
    keys = {"public_key": "pk-lf-1", "secret_key": "sk-lf-1"}
    newer = TracingSettings.model_validate({"base_url": "https://lf.example/", **keys})
    assert newer.enabled and [(d.name, d.url) for d in destinations(newer)] == [
        ("langfuse", "https://lf.example/api/public/otel/v1/traces")]
    alone = TracingSettings.model_validate({"otlp_endpoint": "http://c:4318/v1/traces",
                                            "otlp_headers": {"x-api-key": "k"}})
    assert alone.enabled and not alone.langfuse
    assert [(d.name, d.headers) for d in destinations(alone)] == [("otlp", {"x-api-key": "k"})]
    both = TracingSettings.model_validate({"host": "https://h", "base_url": "https://ignored",
                                           "otlp_endpoint": "http://c:4318/v1/traces", **keys})
    found = destinations(both)
    assert [d.url for d in found] == ["https://h/api/public/otel/v1/traces", "http://c:4318/v1/traces"]
    assert found[0].headers["Authorization"].startswith("Basic ") and "Authorization" not in found[1].headers


def test_start_gives_each_request_a_trace_id_and_its_header() -> None:
    exporter, _ = _exporter()
    first, second = _ctx(1), _ctx(2)
    exporter.start(first)
    exporter.start(second)
    assert first.trace_id and second.trace_id and first.trace_id != second.trace_id
    assert len(first.trace_id) == 32 and int(first.trace_id, 16)
    assert (TRACE_HEADER, first.trace_id.encode()) in first.extra_headers
    forked = first.fork(first.origin.SHADOW)
    exporter.start(forked)
    assert forked.trace_id == first.trace_id  # a shadow copy lands in its primary's trace


def test_sampling_keeps_every_failure() -> None:
    exporter, _ = _exporter(sample_rate=0.0)
    ok, failed = _ctx(1), _ctx(2)
    failed.error, failed.status = InvalidRequest("no"), 400
    for ctx in (ok, failed):
        _finish(exporter, ctx)
    assert exporter.queued == 1


@pytest.mark.alone  # a 50 ms wall-clock bound
def test_a_full_queue_drops_and_counts_without_blocking() -> None:
    exporter, registry = _exporter(queue_size=3)
    started = time.perf_counter()
    for n in range(10):
        _finish(exporter, _ctx(n))
    assert time.perf_counter() - started < 0.05
    assert exporter.queued == 3 and _dropped(registry, "queue_full") == 7


async def test_an_unreachable_langfuse_loses_the_batch_and_the_stop_is_bounded() -> None:
    exporter, registry = _exporter(batch_size=2, shutdown_timeout_s=0.5)
    for n in range(5):
        _finish(exporter, _ctx(n))
    assert await exporter.export_batch() is False  # nothing listens on that port
    assert _dropped(registry, "export_failed") == 2
    started = time.monotonic()
    await exporter.close()
    assert time.monotonic() - started < 1.5
    assert exporter.queued == 0
    assert _dropped(registry, "export_failed") + _dropped(registry, "shutdown") == 5


async def test_spans_are_built_as_requests_finish_and_sent_when_due() -> None:
    """With nothing waiting, a finished request's span is built as it is recorded (its answer has
    gone out) and the request let go; a full batch is sent at once, a partial one
    flush_interval_ms after its first span."""
    import asyncio

    exporter, registry = _exporter(batch_size=4, flush_interval_ms=200, queue_size=100)
    sent = _capture_posts(exporter)
    exporter.start_task()
    try:
        for n in range(3):
            _finish(exporter, _ctx(n))
            assert not exporter._queue and exporter._built == n + 1  # built: no request held
        for _ in range(5):
            await asyncio.sleep(0)
        assert sent == []  # three of four: waiting for the flush interval
        await asyncio.sleep(0.3)
        assert len(sent) == 1 and exporter.queued == 0
        assert registry.get_sample_value("exported_total", {"destination": "langfuse"}) == 3
        assert [span.name for span in _spans(sent[0])] == ["chat unknown"] * 3  # type: ignore[attr-defined]
        # A full batch leaves at once.
        for n in range(4):
            _finish(exporter, _ctx(10 + n))
        for _ in range(20):
            await asyncio.sleep(0)
        assert len(sent) == 2 and exporter.queued == 0
        assert registry.get_sample_value("exported_total", {"destination": "langfuse"}) == 7
        assert len(_spans(sent[1])) == 4
    finally:
        await exporter.close()


async def test_while_requests_reach_upstreams_a_span_is_built_in_the_next_calls_spare_time() -> None:
    """Once upstream calls are running (``spare_time`` jobs ran since the last request), a
    finished request's span is not built as it is recorded: the next upstream call builds it
    while that upstream works. A span no upstream call comes for is built by the export task
    after GATHER_S; a request that reached no upstream (a cache hit) builds its own at once."""
    import asyncio

    from gateway import spare_time

    exporter, _ = _exporter(batch_size=100, flush_interval_ms=5000, queue_size=100)
    sent = _capture_posts(exporter)
    exporter.start_task()
    try:
        _finish(exporter, _ctx(0))
        assert exporter._built == 1 and not exporter._queue  # no upstream call seen yet: built at once
        spare_time.run()  # request 1's upstream call: nothing waits to be built
        waiting = _answered_ctx(1)
        _finish(exporter, waiting)
        assert exporter._built == 1 and len(exporter._queue) == 1  # left for spare time
        _assert_holds_no_request(exporter._queue[0], waiting)
        spare_time.run()  # request 2's upstream call builds request 1's span
        assert exporter._built == 2 and not exporter._queue
        _finish(exporter, _ctx(2))
        assert len(exporter._queue) == 1
        # No upstream call comes: the export task builds it, after GATHER_S, not at once.
        for _ in range(5):
            await asyncio.sleep(0)
        assert len(exporter._queue) == 1
        await _until_built(exporter)
        assert exporter._built == 3 and not exporter._queue
        # Request 4 was a cache hit (no upstream call since request 3): built as recorded.
        _finish(exporter, _ctx(3))
        assert exporter._built == 4 and not exporter._queue
    finally:
        await exporter.close()
    assert exporter.in_spare_time not in spare_time._jobs
    assert len(_spans(b"".join(sent))) == 4  # all four sent at the stop


async def test_a_span_left_for_spare_time_is_built_even_if_the_wall_clock_steps_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The fallback watches the queue's oldest entry, not its wall-clock time: a clock stepped
    back an hour after a request was recorded (its end time now in the future) does not keep
    its span waiting."""

    from gateway import spare_time
    exporter, _ = _exporter(batch_size=100, flush_interval_ms=5000, queue_size=100)
    _capture_posts(exporter)
    exporter.start_task()
    try:
        spare_time.run()  # upstream calls are happening
        real = time.time_ns
        monkeypatch.setattr(time, "time_ns", lambda: real() + 3600 * 10**9)  # the exporter's clock
        _finish(exporter, _ctx(0))
        monkeypatch.setattr(time, "time_ns", real)  # the clock steps back
        assert len(exporter._queue) == 1
        await _until_built(exporter)
        assert exporter._built == 1 and not exporter._queue
    finally:
        await exporter.close()


async def test_spare_time_keeps_a_backlog_from_growing() -> None:
    """Each upstream call builds one waiting span, however many wait; a full batch it completes
    wakes the export task to send it."""
    import asyncio

    from gateway import spare_time

    exporter, _ = _exporter(batch_size=4, flush_interval_ms=5000, queue_size=100)
    sent = _capture_posts(exporter)
    exporter.start_task()
    try:
        spare_time.run()
        for n in range(4):
            _finish(exporter, _ctx(n))
        assert exporter._built == 0 and len(exporter._queue) == 4
        for built in range(1, 5):
            spare_time.run()
            assert exporter._built == built
        for _ in range(20):
            await asyncio.sleep(0)
        assert len(sent) == 1 and len(_spans(sent[0])) == 4 and exporter.queued == 0
    finally:
        await exporter.close()


async def test_a_backlog_is_built_in_slices_after_the_gather() -> None:
    """While spans wait (a batch being sent, a burst), recorded requests queue; the export task
    builds them GATHER_S later, a slice of loop time at a time, never on the request path."""
    import asyncio

    exporter, _ = _exporter(batch_size=4, flush_interval_ms=200, queue_size=100)
    exporter._post = lambda destination, payload: asyncio.sleep(0.05)  # type: ignore[method-assign]
    exporter.start_task()
    try:
        for n in range(7):  # four build at once and fill the batch; three queue behind it
            _finish(exporter, _ctx(n))
        assert exporter._built == 4 and len(exporter._queue) == 3
        for _ in range(5):
            await asyncio.sleep(0)
        assert len(exporter._queue) == 3  # gathering: at low rates several spans are built per wake-up
        await asyncio.sleep(GATHER_S + 0.5)
        assert exporter.queued == 0
    finally:
        await exporter.close()


async def test_a_backlog_the_export_task_cannot_build_stops_growing() -> None:
    """On a saturated loop the export task's slices fall behind; past a batch waiting, each
    recorded request builds the oldest waiting span (ahead of the export, up to BEHIND_BATCHES
    batches, sent as one), so the queue holds steady instead of filling up and dropping spans."""
    import asyncio

    from gateway.tracing.exporter import BEHIND_BATCHES

    exporter, registry = _exporter(batch_size=2, flush_interval_ms=10_000, queue_size=50)
    sent = _capture_posts(exporter)

    async def never_gets_a_turn() -> None:  # the export task of a saturated loop
        await asyncio.Event().wait()

    exporter._run = never_gets_a_turn  # type: ignore[method-assign]
    exporter.start_task()
    try:
        for n in range(48):
            _finish(exporter, _ctx(n))
            assert len(exporter._queue) <= 3  # never more than a batch and the newest request
            if exporter._built == BEHIND_BATCHES * 2:  # what an export in flight let pile up
                assert await exporter.export_batch()
        assert _dropped(registry, "queue_full") == 0
        assert sent and all(len(_spans(payload)) == BEHIND_BATCHES * 2 for payload in sent)
    finally:
        await exporter.close()


def test_a_batch_is_one_valid_request_whatever_the_compression() -> None:
    """Each span is its own resource_spans entry, compressed as it is built: the batch's bytes,
    joined (and the compressor's tail), decode as one ExportTraceServiceRequest."""
    import asyncio

    async def batch(compression: str, spans: int) -> bytes:
        exporter, _ = _exporter(batch_size=spans + 5, compression=compression)
        sent = _capture_posts(exporter)
        exporter.start_task()
        for n in range(spans):
            ctx = _answered_ctx(n)
            ctx.body = {"model": "m", "messages": [{"role": "user", "content": f"question {n} " + "x" * 600}]}
            _finish(exporter, ctx)
        await exporter.export_batch()
        await exporter.close()
        return sent[0]

    # 5 spans: less than a compression chunk, all given to the compressor at export; 80 spans
    # of ~0.8 KB: several chunks compressed as built, then the last.
    for compression, spans in (("gzip", 5), ("gzip", 80), ("none", 5)):
        payload = asyncio.run(batch(compression, spans))
        assert payload[:2] == b"\x1f\x8b" if compression == "gzip" else payload[:1] == b"\x0a"
        decoded = _spans(payload)
        assert len(decoded) == spans and len({span.trace_id for span in decoded}) == spans  # type: ignore[attr-defined]
        request_ids = [attribute.value.string_value for span in decoded for attribute in span.attributes  # type: ignore[attr-defined]
                       if attribute.key == "langfuse.observation.metadata.request_id"]
        assert sorted(request_ids) == sorted(f"r{n}" for n in range(spans))


async def test_the_queue_depth_gauge_follows_the_backlog() -> None:
    """gateway_trace_queue_depth: what waits for export, set per export (not per request)."""
    from prometheus_client import Gauge

    registry = CollectorRegistry()
    config = TracingSettings.model_validate({"host": f"http://127.0.0.1:{free_port()}", "public_key": "pk-lf-1",
                                             "secret_key": "sk-lf-1", "batch_size": 256, "timeout_s": 0.2})
    exporter = exporter_for(
        config, dropped=Counter("dropped", "d", ("reason", "destination"), registry=registry),
        exported=Counter("exported", "e", ("destination",), registry=registry),
        depth=Gauge("depth", "q", registry=registry),
    )
    for n in range(300):
        _finish(exporter, _ctx(n))
    assert registry.get_sample_value("depth") == 0.0  # recording costs no gauge update
    await exporter.export_batch()  # one batch of 256 taken (and refused: nothing listens)
    assert registry.get_sample_value("depth") == 44.0
    await exporter.export_batch()
    assert registry.get_sample_value("depth") == 0.0
    await exporter.close()


def test_an_input_past_the_field_limit_is_cut_and_still_masked() -> None:
    from gateway.tracing.spans import MAX_FIELD_CHARS

    exporter, _ = _exporter(content="mask")
    small, large = _ctx(1), _ctx(2)
    small.body = {"messages": [{"role": "user", "content": "card 4111 1111 1111 1111"}]}
    large.body = {"messages": [{"role": "user", "content": "card 4111 1111 1111 1111 " + "x" * MAX_FIELD_CHARS}]}
    inputs = []
    for ctx in (small, large):
        exporter.start(ctx)
        span = exporter.builder.build(ctx, time.time_ns())
        inputs.append(span.split(b"langfuse.observation.input")[1])
    assert b'[{"role":"user","content":"card [card]"}]' in inputs[0]
    assert b"card [card] xxx" in inputs[1] and b"4111" not in inputs[1]
    assert inputs[1].count(b"x") <= MAX_FIELD_CHARS and "…[cut by the gateway]".encode() in inputs[1]


def test_repeating_metadata_is_encoded_once_per_combination_and_decodes_the_same() -> None:
    """The metadata that repeats (team, status, stream...) is kept encoded per combination of
    values: each span still carries its own values, with their types (a bool is not an int)."""
    exporter, _ = _exporter()
    builder = exporter.builder
    made = []
    for n, (status, stream, attempts) in enumerate([(200, False, 1), (500, True, 1), (200, False, 1), (200, True, 2)]):
        ctx = _ctx(n)
        ctx.status, ctx.stream, ctx.attempts = status, stream, attempts
        exporter.start(ctx)
        made.append(_spans(exporter._envelope.entry(builder.build(ctx, time.time_ns())))[0])
    assert len(builder._repeating) == 1 + 3  # one head for all; the first and third share metadata

    def metadata(span: object) -> dict[str, object]:
        prefix = "langfuse.observation.metadata."
        found: dict[str, object] = {}
        for attribute in span.attributes:  # type: ignore[attr-defined]
            if attribute.key.startswith(prefix):
                value = attribute.value
                found[attribute.key[len(prefix):]] = getattr(value, value.WhichOneof("value"))
        return found

    seen = [metadata(span) for span in made]
    assert [(m["status"], m["stream"], m["attempts"]) for m in seen] == [
        (200, False, 1), (500, True, 1), (200, False, 1), (200, True, 2)
    ]
    assert all(type(m["stream"]) is bool and type(m["status"]) is int for m in seen)
    assert [m["request_id"] for m in seen] == ["r0", "r1", "r2", "r3"]
    assert "latency_ms" in seen[0] and "origin" in seen[0] and "error_code" not in seen[0]


def test_the_repeating_head_keeps_each_spans_parameters_and_types() -> None:
    """The head (model, parameters, trace name) is encoded once per combination: a temperature
    of 1 and one of 1.0 stay an int and a double, and a fork names no trace."""
    exporter, _ = _exporter()

    def attributes(ctx: RequestContext) -> dict[str, object]:
        exporter.start(ctx)
        span = _spans(exporter._envelope.entry(exporter.builder.build(ctx, time.time_ns())))[0]
        return {a.key: getattr(a.value, a.value.WhichOneof("value")) for a in span.attributes}  # type: ignore[attr-defined]

    seen = []
    cases = [(1, 64, None), (1.0, 64, None), (0.2, 8, "p"), (1, 64, None)]
    for n, (temperature, max_tokens, parent) in enumerate(cases):
        ctx = _ctx(n)
        ctx.body = {"messages": [], "temperature": temperature, "max_tokens": max_tokens}
        ctx.parent_id = parent
        seen.append(attributes(ctx))
    assert [(a["gen_ai.request.temperature"], type(a["gen_ai.request.temperature"])) for a in seen] == [
        (1, int), (1.0, float), (0.2, float), (1, int)
    ]
    assert [a["gen_ai.request.max_tokens"] for a in seen] == [64, 64, 8, 64]
    assert ["langfuse.trace.name" in a for a in seen] == [True, True, False, True]


def test_the_gzip_stream_is_isal_where_its_wheel_is_and_decodes_as_gzip() -> None:
    import gzip
    import platform

    from gateway.tracing.exporter import gzip_compressor

    compressor = gzip_compressor()
    if platform.machine() in ("x86_64", "aarch64"):
        assert type(compressor).__module__.startswith("isal"), type(compressor)
    chunks = [f"span {n} ".encode() * 50 for n in range(20)]
    payload = b"".join(compressor.compress(chunk) for chunk in chunks) + compressor.flush()
    assert gzip.decompress(payload) == b"".join(chunks) and len(payload) < sum(map(len, chunks)) // 5


def test_values_new_on_every_request_are_not_kept_among_the_repeating_encodings() -> None:
    """A stream's completion start time, a request id, a latency: encoded each time, never added to
    the cache of encodings that repeat (it would fill with one entry per request, grow the heap
    until it starts over, and evict what does repeat)."""
    from gateway.context import Usage
    from gateway.tracing import otlp

    exporter, _ = _exporter()
    contexts = []
    for n in range(50):
        ctx = _answered_ctx(n)
        ctx.stream, ctx.usage, ctx.elapsed_seconds = True, Usage(3, 1), 0.004 + n / 1000
        assert ctx.answer is not None
        ctx.answer.first_at = ctx.started + 0.001 + n / 1000  # a time to first token, new each time
        exporter.start(ctx)
        contexts.append(ctx)
    builder = exporter.builder
    spans = [builder.build(ctx, time.time_ns()) for ctx in contexts[:10]]
    held = len(otlp._repeating)
    spans += [builder.build(ctx, time.time_ns()) for ctx in contexts[10:]]
    assert len(otlp._repeating) == held
    assert all(b"langfuse.observation.completion_start_time" in span for span in spans)
