"""Relaying an upstream's SSE stream event by event, and reading usage out of it.

Upstream bytes arrive in arbitrary pieces; the relay cuts them at event boundaries so the
client (and the cache, which assembles whole answers) only ever sees complete events.
Usage is taken from the stream itself (``gateway.wire`` reads it). When the gateway asked the
upstream for usage on the caller's behalf (``stream_options.include_usage``), the usage-only
event is kept from the caller, who did not ask for it. An upstream's in-band error event ends
the relay with ``UpstreamStreamError``: the caller gets one error event, not the upstream's
and then the gateway's.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import orjson

from gateway.context import RequestContext
from gateway.errors import UpstreamMalformed, UpstreamStreamError
from gateway.redact import redact
from gateway.wire import DONE_EVENT, usage_of_event


def _stream_error(data: bytes) -> UpstreamStreamError | None:
    """The failure an upstream's in-band ``{"error": ...}`` event reports, or ``None``.

    It is not relayed as sent: the stream ends there, and the core handler closes it with one
    error event in the gateway's shape. The upstream's message is kept (scrubbed: upstreams
    echo credentials in error messages), answer chunks that merely mention "error" pass as sent.
    """
    try:
        event = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(event, dict) or "error" not in event or "choices" in event:
        return None
    error = event["error"]
    message = error.get("message") if isinstance(error, dict) else error
    said = redact(str(message)) if message else "no message"
    return UpstreamStreamError(f"The upstream failed mid-answer: {said}")


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
                failure = _stream_error(data)
                if failure is not None:
                    if out:
                        yield b"".join(out)  # what came before the failure reaches the caller
                    raise failure
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
