"""The core handler: one request's lifecycle, the same for every way a request enters.

    handle(ctx) -> Reply      run the pipeline; errors become OpenAI-shaped error replies
    run(ctx)    -> Reply      handle, read the whole answer, finish (internal requests)

The ASGI ``/v1`` handler calls ``handle`` and delivers the reply to the caller, then calls
``ctx.finish()`` (it alone knows when the last byte went out, and whether the caller left).
The evaluation runner and shadow copies call ``run``, which does all of it. Nobody else
catches pipeline errors, renders them or decides a request's status: that happens here.

A ``GatewayError`` (refused, rejected, failed upstream) becomes a ``JsonReply`` with its
status, error body and headers. An unexpected exception becomes a 500 ``internal_error``
with nothing of the exception in it (the log has the trace). A stream that fails after its
status line went out cannot change its status: the failure becomes an in-band error event,
and ``ctx.status``/``ctx.error`` record it for the ledger and metrics.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator

from gateway.context import JsonReply, Reply, RequestContext, StreamReply
from gateway.errors import GatewayError, error_body, internal_error
from gateway.pipeline_types import Handler
from gateway.wire import error_event

log = logging.getLogger("gateway.core")

#: nginx's convention for a caller that went away before the answer was done.
CLIENT_CLOSED = 499


def error_reply(error: GatewayError) -> JsonReply:
    """The reply for a refused or failed request: OpenAI's error shape, the error's own headers."""
    headers = [(name.encode(), value.encode()) for name, value in error.headers.items()]
    return JsonReply(error.status, error_body(error), None, headers)


class Core:
    """Runs requests through ``pipeline`` (see the module docstring)."""

    __slots__ = ("_pipeline",)

    def __init__(self, pipeline: Handler) -> None:
        self._pipeline = pipeline

    async def handle(self, ctx: RequestContext) -> Reply:
        """The reply for ``ctx``; never raises but ``CancelledError``. The caller finishes ``ctx``."""
        try:
            reply = await self._pipeline(ctx)
        except GatewayError as error:
            _failed(ctx, error)
            return error_reply(error)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("unhandled error", extra={"request_id": ctx.request_id})
            internal = internal_error()
            _failed(ctx, internal)
            return error_reply(internal)
        ctx.status = reply.status
        if isinstance(reply, StreamReply):
            reply.events = _Guarded(ctx, reply.events)
        return reply

    async def run(self, ctx: RequestContext) -> Reply:
        """Handle ``ctx`` for an internal caller: the whole answer is read, then ``ctx`` finished.

        A stream is read to its end (``ctx.answer`` holds it). If the task is cancelled, the
        request is recorded as cancelled (499), like a caller who hung up.
        """
        try:
            reply = await self.handle(ctx)
            if isinstance(reply, StreamReply):
                events = reply.events
                try:
                    async for _ in events:
                        pass
                finally:
                    aclose = getattr(events, "aclose", None)
                    if aclose is not None:
                        await aclose()
            return reply
        except asyncio.CancelledError:
            ctx.status = CLIENT_CLOSED
            raise
        finally:
            ctx.overhead_seconds = time.perf_counter() - ctx.started - ctx.upstream_seconds
            ctx.finish()


def _failed(ctx: RequestContext, error: GatewayError) -> None:
    ctx.status = error.status
    # The error outlives its raise on ``ctx``; its traceback (and those of the exceptions it
    # was raised from) holds the frames that hold ``ctx``: a reference cycle per failed
    # request, freed only by the garbage collector. A flood of refused keys then cost full
    # collections of 20-35 ms. Once mapped here, nothing needs the traceback: drop it.
    error.__traceback__ = error.__context__ = error.__cause__ = None
    ctx.error = error


class _Guarded:
    """Relays ``events``; a failure after the status line went out becomes one error event.

    A class, not an async generator: one plain coroutine call per batch is the cheapest layer
    Python offers, and every stream pays it once per upstream read.
    """

    __slots__ = ("_ctx", "_done", "_events")

    def __init__(self, ctx: RequestContext, events: AsyncIterator[bytes]) -> None:
        self._ctx = ctx
        self._events = events
        self._done = False

    def __aiter__(self) -> _Guarded:
        return self

    async def __anext__(self) -> bytes:
        if self._done:
            raise StopAsyncIteration
        try:
            return await self._events.__anext__()
        except StopAsyncIteration:
            self._done = True
            raise
        except GatewayError as error:
            failed: GatewayError = error
        except Exception:
            log.exception("unhandled error in a stream", extra={"request_id": self._ctx.request_id})
            failed = internal_error()
        self._done = True
        _failed(self._ctx, failed)
        return error_event(failed)

    async def aclose(self) -> None:
        aclose = getattr(self._events, "aclose", None)
        if aclose is not None:
            await aclose()
