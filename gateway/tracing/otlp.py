"""The few OTLP protobuf messages the gateway sends, encoded by hand.

Building the official ``opentelemetry-proto`` message objects cost ~65 µs per span (one
Python object per attribute, then a copy into the span); writing the same bytes directly
costs a fraction of that. Only what a request's span needs is here: string, bool, int and
double and string-array attributes, a span with a status, and the ``ExportTraceServiceRequest`` envelope.
The field numbers are those of ``opentelemetry/proto/trace/v1/trace.proto`` and
``common/v1/common.proto``; ``tests/test_tracing_otlp.py`` decodes the output with the
official definitions, as Langfuse does.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from typing import Final

SPAN_KIND_SERVER: Final = 2
STATUS_ERROR: Final = 2

_double = struct.Struct("<d").pack
_fixed64 = struct.Struct("<Q").pack
_keys: dict[str, bytes] = {}  # encoded "key" fields (a bounded set: the attribute names)
AttributeValue = str | int | float | bool | list[str]
Attribute = tuple[str, AttributeValue]


def varint(value: int) -> bytes:
    if value < 0:
        value += 1 << 64  # int64 as two's complement: ten bytes
    if value < 0x80:
        return bytes((value,))
    if value < 0x4000:  # the length of an input or output: two bytes, without a loop
        return bytes(((value & 0x7F) | 0x80, value >> 7))
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _field(tag: int, payload: bytes) -> bytes:
    """A length-delimited field (wire type 2) with a one-byte tag."""
    size = len(payload)
    if size < 0x80:
        return bytes((tag, size)) + payload
    return b"".join((bytes((tag,)), varint(size), payload))


def _key(key: str) -> bytes:
    encoded = _keys.get(key)
    if encoded is None:
        encoded = _keys[key] = _field(0x0A, key.encode())  # KeyValue.key = 1
    return encoded


def key_value(key: str, value: AttributeValue) -> bytes:
    """One ``KeyValue`` (``key`` = 1, ``value`` = 2 an ``AnyValue``)."""
    if type(value) is str:
        data = value.encode()
        size = len(data)
        if size < 126:  # both lengths fit one byte: the common case, in one concatenation
            return _key(key) + bytes((0x12, size + 2, 0x0A, size)) + data
        # string_value = 1 inside value = 2, without building the AnyValue on its own
        length = varint(size)
        return b"".join((_key(key), b"\x12", varint(1 + len(length) + size), b"\x0a", length, data))
    elif isinstance(value, bool):
        any_value = b"\x10\x01" if value else b"\x10\x00"  # bool_value = 2
    elif isinstance(value, int):
        any_value = b"\x18" + varint(value)  # int_value = 3
    elif isinstance(value, float):
        any_value = b"\x21" + _double(value)  # double_value = 4 (fixed64)
    elif isinstance(value, list):  # array_value = 5: an ArrayValue of string AnyValues (values = 1)
        any_value = _field(0x2A, b"".join(_field(0x0A, _field(0x0A, str(item).encode())) for item in value))
    else:
        any_value = _field(0x0A, str(value).encode())
    return _key(key) + _field(0x12, any_value)


#: Encoded attributes whose values repeat from request to request (team, alias, model, status...).
_repeating: dict[tuple[int, str, type, object], bytes] = {}  # a list value is keyed as a tuple
_REPEATING_MAX = 8192
_REPEATING_MAX_CHARS = 64


def _encode_repeating(index: tuple[int, str, type, object], key: str, value: AttributeValue, tag: int) -> bytes:
    """``KeyValue`` under ``tag``, encoded and kept under ``index`` (``attributes``' miss)."""
    if len(_repeating) >= _REPEATING_MAX:
        _repeating.clear()
    encoded = _repeating[index] = _field(tag, key_value(key, value))
    return encoded


def attributes(items: Iterable[Attribute], tag: int, *, repeating: bool = True) -> bytes:
    """Repeated ``KeyValue`` fields under ``tag`` (already shifted: ``field << 3 | 2``).

    Short values are encoded once and reused: most of a request's attributes are the same as
    the last one's. ``repeating=False`` for values new on every request (ids), which are not
    worth keeping. Written out in one loop: a span's dozen attributes cost a lookup each, not
    four calls (the calls were a third of a span's encoding)."""
    parts: list[bytes] = []
    add = parts.append
    for key, value in items:
        kind = type(value)
        if repeating and kind is not float and not (kind is str and len(value) > _REPEATING_MAX_CHARS):  # type: ignore[arg-type]
            index = (tag, key, kind, tuple(value) if kind is list else value)  # type: ignore[arg-type]
            encoded = _repeating.get(index)
            if encoded is None:
                encoded = _encode_repeating(index, key, value, tag)
            add(encoded)
            continue
        pair = key_value(key, value)
        size = len(pair)
        add(bytes((tag, size)) if size < 0x80 else bytes((tag,)) + varint(size))
        add(pair)
    return b"".join(parts)


def span(
    *,
    trace_id: bytes,
    span_id: bytes,
    name: str,
    kind: int,
    start_ns: int,
    end_ns: int,
    attributes_bytes: bytes,
    status_code: int = 0,
    status_message: str = "",
    parent_span_id: bytes = b"",
) -> bytes:
    """One encoded ``Span`` message (without its enclosing field tag)."""
    parts = [
        _field(0x0A, trace_id),  # trace_id = 1
        _field(0x12, span_id),  # span_id = 2
    ]
    if parent_span_id:
        parts.append(_field(0x22, parent_span_id))  # parent_span_id = 4
    parts.append(_field(0x2A, name.encode()))  # name = 5
    parts.append(b"\x30" + varint(kind))  # kind = 6
    parts.append(b"\x39" + _fixed64(start_ns))  # start_time_unix_nano = 7 (fixed64)
    parts.append(b"\x41" + _fixed64(end_ns))  # end_time_unix_nano = 8 (fixed64)
    parts.append(attributes_bytes)  # attributes = 9, each tagged 0x4A
    if status_code:
        status = (_field(0x12, status_message.encode()) if status_message else b"") + b"\x18" + varint(status_code)
        parts.append(b"\x7A" + varint(len(status)) + status)  # status = 15
    return b"".join(parts)


SPAN_ATTRIBUTE_TAG: Final = 0x4A  # Span.attributes = 9


class Envelope:
    """Each span as a whole ``ResourceSpans`` entry (``ExportTraceServiceRequest.resource_spans``,
    field 1) with the same resource and scope: entries concatenate into a valid request.

    So a batch's bytes are final as each span is built, and can be compressed as spans are
    built (the exporter gives them to gzip 16 KiB at a time) instead of all at once at export
    (a whole batch, 2-4 ms of loop time, was one of the stalls in the latency tail). The
    repeated resource and scope cost ~60 bytes a span before compression and next to nothing
    after.
    """

    __slots__ = ("_head", "_scope")

    def __init__(self, resource: Iterable[Attribute], scope_name: str) -> None:
        self._head = _field(0x0A, attributes(resource, 0x0A))  # ResourceSpans.resource = 1
        self._scope = _field(0x0A, _field(0x0A, scope_name.encode()))  # ScopeSpans.scope = 1 (its name = 1)

    def entry(self, span: bytes) -> bytes:
        """``span`` (encoded) as one ``resource_spans`` entry."""
        scope_spans = self._scope + _field(0x12, span)  # ScopeSpans.spans = 2
        return _field(0x0A, self._head + _field(0x12, scope_spans))  # ResourceSpans.scope_spans = 2
