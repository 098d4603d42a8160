"""The hand-written OTLP encoder, decoded with the official OpenTelemetry protobuf definitions."""

from __future__ import annotations

import dataclasses

import orjson
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from benchmarks.servers import stage_catalog
from gateway.answer import Answer
from gateway.auth import Principal
from gateway.context import Endpoint, Origin, RequestContext, Usage
from gateway.errors import InvalidRequest
from gateway.testing.langfuse_receiver import _attributes
from gateway.tracing import otlp
from gateway.tracing.maskers import MASKERS
from gateway.tracing.policy import TracePolicies, TracePolicy
from gateway.tracing.redaction import Redactor
from gateway.tracing.spans import SpanBuilder

VALUES: list[otlp.AttributeValue] = [
    "", "plain", "ünïcødé ✓", "x" * 100_000, 0, 1, 127, 128, 300, 2**40, 2**63 - 1, -1, -(2**63),
    0.0, 1.5, -2.25e-9, 1.234e-5, True, False, [], ["stop"], ["stop", "length ✓", "x" * 300],
]


def _decode(payload: bytes) -> Span:
    request = ExportTraceServiceRequest()
    request.ParseFromString(payload)
    [resource_spans] = request.resource_spans
    [scope_spans] = resource_spans.scope_spans
    assert scope_spans.scope.name == "scope"
    assert _attributes(resource_spans.resource.attributes) == {"service.name": "svc"}
    [span] = scope_spans.spans
    return span


@pytest.mark.parametrize("value", VALUES, ids=lambda v: repr(v)[:20])
def test_each_attribute_value_decodes_to_itself(value: otlp.AttributeValue) -> None:
    encoded = otlp.span(
        trace_id=bytes(range(16)), span_id=bytes(range(8)), name="n", kind=otlp.SPAN_KIND_SERVER,
        start_ns=1, end_ns=2, attributes_bytes=otlp.attributes([("k", value)], otlp.SPAN_ATTRIBUTE_TAG),
    )
    span = _decode(otlp.Envelope([("service.name", "svc")], "scope").entry(encoded))
    decoded = _attributes(span.attributes)["k"]
    assert decoded == value and type(decoded) is type(value)


def test_envelope_entries_concatenate_into_one_request() -> None:
    """The exporter's form: each span a whole resource_spans entry, the batch their concatenation."""
    envelope = otlp.Envelope([("service.name", "svc")], "scope")
    spans = [
        otlp.span(trace_id=bytes([n]) * 16, span_id=bytes([n]) * 8, name=f"span {n}", kind=otlp.SPAN_KIND_SERVER,
                  start_ns=1, end_ns=2, attributes_bytes=otlp.attributes([("n", n)], otlp.SPAN_ATTRIBUTE_TAG))
        for n in range(1, 4)
    ]
    single = _decode(envelope.entry(spans[0]))  # one entry alone is a whole request
    assert single.name == "span 1"
    request = ExportTraceServiceRequest()
    request.ParseFromString(b"".join(envelope.entry(span) for span in spans))
    assert len(request.resource_spans) == 3
    for n, resource_spans in enumerate(request.resource_spans, start=1):
        assert _attributes(resource_spans.resource.attributes) == {"service.name": "svc"}
        [scope_spans] = resource_spans.scope_spans
        assert scope_spans.scope.name == "scope"
        [span] = scope_spans.spans
        assert span.name == f"span {n}" and _attributes(span.attributes) == {"n": n}


def test_a_span_with_every_field() -> None:
    attrs = [("a", "1"), ("b", 2), ("c", 3.5), ("d", True)]
    encoded = [
        otlp.span(
            trace_id=bytes.fromhex("0af7651916cd43dd8448eb211c80319c"), span_id=bytes.fromhex("b7ad6b7169203331"),
            name=f"span {n} ✓", kind=otlp.SPAN_KIND_SERVER, start_ns=1_700_000_000_000_000_000 + n,
            end_ns=1_700_000_000_500_000_000, attributes_bytes=otlp.attributes(attrs, otlp.SPAN_ATTRIBUTE_TAG),
            status_code=otlp.STATUS_ERROR, status_message="upstream failed", parent_span_id=bytes(range(8)),
        )
        for n in range(3)
    ]
    request = ExportTraceServiceRequest()
    envelope = otlp.Envelope([("service.name", "svc")], "scope")
    request.ParseFromString(b"".join(envelope.entry(span) for span in encoded))
    spans = [span for resource in request.resource_spans for scope in resource.scope_spans for span in scope.spans]
    assert [span.name for span in spans] == ["span 0 ✓", "span 1 ✓", "span 2 ✓"]
    span = spans[2]
    assert span.trace_id.hex() == "0af7651916cd43dd8448eb211c80319c" and span.span_id.hex() == "b7ad6b7169203331"
    assert span.parent_span_id == bytes(range(8)) and span.kind == Span.SPAN_KIND_SERVER
    assert span.start_time_unix_nano == 1_700_000_000_000_000_002
    assert span.end_time_unix_nano == 1_700_000_000_500_000_000
    assert _attributes(span.attributes) == {"a": "1", "b": 2, "c": 3.5, "d": True}
    assert (span.status.code, span.status.message) == (Status.STATUS_CODE_ERROR, "upstream failed")


def test_a_failed_request_as_a_span() -> None:
    catalog = stage_catalog("t", {})
    alias = catalog.aliases["bench"]
    ctx = RequestContext(request_id="r1", endpoint=Endpoint.CHAT, raw_body=b"{}", authorization=None, catalog=catalog)
    ctx.principal = Principal(key_id="key_1", team="t", roles=frozenset({"app"}))
    ctx.body = {"model": "bench", "messages": [{"role": "user", "content": "hi"}]}
    ctx.alias, ctx.deployment, ctx.deployments = alias, alias.deployments[0], alias.deployments
    ctx.usage, ctx.cost, ctx.elapsed_seconds = Usage(3, 0), 1.5e-7, 0.25
    ctx.answer = Answer.of_json(400, b'{"error": {"message": "no"}}', None)
    ctx.error, ctx.status = InvalidRequest("Bad field sk-abcdefghijklmnop."), 400
    ctx.trace_id = "0af7651916cd43dd8448eb211c80319c"
    span = Span()
    builder = SpanBuilder(environment="env", redactor=Redactor(list(MASKERS.values())),
                          policies=TracePolicies(TracePolicy(1.0, "full")))
    span.ParseFromString(builder.build(ctx, 2_000_000_000))
    attributes = _attributes(span.attributes)
    assert span.start_time_unix_nano == 1_750_000_000 and span.status.code == Status.STATUS_CODE_ERROR
    assert attributes["langfuse.observation.level"] == "ERROR"
    assert "sk-abcdefghijklmnop" not in span.status.message and "[redacted]" in span.status.message
    assert orjson.loads(attributes["langfuse.observation.cost_details"]) == {"total": 1.5e-7}
    assert attributes["langfuse.observation.metadata.team"] == "t"
    assert "langfuse.observation.output" not in attributes
    for absent in ("data_class", "served_alias", "downgraded_from"):  # off, or as asked: not sent
        assert f"langfuse.observation.metadata.{absent}" not in attributes


def test_the_data_class_fallback_alias_and_downgrade_are_on_the_span() -> None:
    catalog = stage_catalog("t", {})
    asked, served = catalog.aliases["bench"], catalog.aliases["bench"].deployments[0]
    ctx = RequestContext(request_id="r1", endpoint=Endpoint.CHAT, raw_body=b"{}", authorization=None, catalog=catalog)
    ctx.principal = Principal(key_id="key_1", team="t", roles=frozenset({"app"}))
    ctx.body = {"model": "bench", "messages": [{"role": "user", "content": "hi"}]}
    ctx.alias, ctx.deployments, ctx.status = asked, asked.deployments, 200
    ctx.deployment = dataclasses.replace(served, alias="other-alias")  # served by a fallback alias
    ctx.data_class, ctx.downgraded_from = "restricted", "big-model"
    ctx.trace_id = "0af7651916cd43dd8448eb211c80319c"
    span = Span()
    builder = SpanBuilder(environment="env", redactor=Redactor(list(MASKERS.values())),
                          policies=TracePolicies(TracePolicy(1.0, "full")))
    span.ParseFromString(builder.build(ctx, 2_000_000_000))
    meta = {k.removeprefix("langfuse.observation.metadata."): v for k, v in _attributes(span.attributes).items()
            if k.startswith("langfuse.observation.metadata.")}
    assert (meta["data_class"], meta["served_alias"], meta["downgraded_from"]) == (
        "restricted", "other-alias", "big-model"
    )
    assert meta["alias"] == "bench"


def test_a_fork_is_a_child_observation_of_its_primarys_span() -> None:
    catalog = stage_catalog("t", {})
    primary = RequestContext(request_id="r1", endpoint=Endpoint.CHAT, raw_body=b"{}", authorization=None,
                             catalog=catalog)
    primary.principal = Principal(key_id="key_1", team="t", roles=frozenset({"app"}))
    primary.trace_id = "0af7651916cd43dd8448eb211c80319c"
    shadow = primary.fork(Origin.SHADOW)
    builder = SpanBuilder(environment="env", redactor=Redactor(list(MASKERS.values())),
                          policies=TracePolicies(TracePolicy(1.0, "full")))
    spans = []
    for ctx in (primary, shadow):
        span = Span()
        span.ParseFromString(builder.build(ctx, 2_000_000_000))
        spans.append(span)
    first, second = spans
    assert first.trace_id == second.trace_id and first.parent_span_id == b""
    assert second.parent_span_id == first.span_id != second.span_id
    assert "langfuse.trace.name" in _attributes(first.attributes)
    assert "langfuse.trace.name" not in _attributes(second.attributes)  # it does not rename the trace


def test_the_completion_start_time_is_written_as_isoformat_writes_it() -> None:
    from datetime import UTC, datetime

    from gateway.tracing.spans import _iso_json

    for ns in (1796567089123456789, 1796567089000000000, 1796567089000001000, 0):
        assert orjson.loads(_iso_json(ns)) == datetime.fromtimestamp(ns / 1e9, tz=UTC).isoformat()
