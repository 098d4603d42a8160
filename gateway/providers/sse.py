"""Relaying an upstream's SSE stream event by event, and reading usage out of it.

Upstream bytes arrive in arbitrary pieces; the relay cuts them at event boundaries so the
client (and the cache, which assembles whole answers) only ever sees complete events.
Usage is taken from the stream itself (``gateway.wire`` reads it). When the gateway asked the upstream for usage on the
caller's behalf (``stream_options.include_usage``), the usage-only event is kept from the
caller, who did not ask for it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson

from gateway.context import RequestContext
from gateway.errors import UpstreamMalformed
from gateway.redact import redact
from gateway.wire import DONE_EVENT, usage_of_event


def _scrubbed_error(data: bytes) -> bytes:
    """An upstream's in-band ``{"error": ...}`` event with every secret scrubbed from its text.

    Upstreams echo credentials in error messages; a relayed event must not carry them to the
    caller. Only events whose top level is an error are re-framed: answer chunks pass as sent.
    """
    try:
        event = orjson.loads(data)
    except orjson.JSONDecodeError:
        return data
    if not isinstance(event, dict) or "error" not in event:
        return data
    return orjson.dumps(_scrub_strings(event))


def _scrub_strings(value: Any) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {key: _scrub_strings(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_scrub_strings(item) for item in value]
    return value


async def relay_events(
    pieces: AsyncIterator[bytes],
    ctx: RequestContext,
    *,
    drop_usage_event: bool,
    max_event_bytes: int = 8 * 1024 * 1024,
) -> AsyncIterator[bytes]:
    """Yield complete events (batched per upstream read) until ``[DONE]``.

    Raises ``UpstreamMalformed`` if the upstream ends without ``[DONE]`` or sends an event
    larger than ``max_event_bytes``; the caller turns that into an error event.
    """
    buffer = b""
    async for piece in pieces:
        buffer = buffer + piece if buffer else piece
        if b"\n\n" not in buffer:
            if len(buffer) > max_event_bytes:
                raise UpstreamMalformed("The upstream sent an oversized or unterminated stream event.")
            continue
        if b"\r\n" in buffer:
            buffer = buffer.replace(b"\r\n", b"\n")
        complete, _, buffer = buffer.rpartition(b"\n\n")
        out: list[bytes] = []
        done = False
        for event in complete.split(b"\n\n"):
            if not event:
                continue
            data = event[6:] if event.startswith(b"data: ") else event[5:] if event.startswith(b"data:") else None
            if data is None:
                continue  # comments (": keep-alive") and other SSE fields are not relayed
            if data == b"[DONE]":
                done = True
                break
            if b'"error"' in data:
                data = _scrubbed_error(data)
            if b'"usage":{' in data or b'"usage": {' in data:
                usage = usage_of_event(data)
                if usage is not None:
                    ctx.usage = usage
                    if drop_usage_event and (b'"choices":[]' in data or b'"choices": []' in data):
                        continue
            out.append(b"data: " + data + b"\n\n")
        if done:
            out.append(DONE_EVENT)
            yield b"".join(out)
            return
        if out:
            yield b"".join(out)
    raise UpstreamMalformed("The upstream stream ended without [DONE].")
