"""The fast path: any OpenAI-compatible upstream (OpenAI, vLLM, Ollama, the fake), via aiohttp.

One pooled ``ClientSession`` per process; per deployment the URL, headers and timeouts are
built once. The request body is serialised once with orjson; a JSON answer is parsed once
(to check it and read usage) and its original bytes are passed on untouched. aiohttp's
exceptions are translated into the gateway's here and nowhere else.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import aiohttp
import orjson

from gateway.context import JsonReply, Reply, RequestContext, StreamReply
from gateway.errors import (
    UpstreamError,
    UpstreamMalformed,
    UpstreamRejected,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from gateway.providers.sse import relay_events
from gateway.redact import redact
from gateway.wire import usage_from

if TYPE_CHECKING:
    from gateway.catalog import Deployment

_JSON = b"application/json"


@dataclass(frozen=True, slots=True)
class _Target:
    chat_url: str
    embeddings_url: str
    headers: dict[str, str]
    timeout: aiohttp.ClientTimeout
    stream_timeout: aiohttp.ClientTimeout


def _upstream_message(status: int, body: bytes, deployment: Deployment) -> str:
    if status in (401, 403):
        # The upstream refused the gateway's own credentials: the caller can do nothing
        # about it, and the upstream's message may quote part of the provider key.
        return f"The upstream for {deployment.label} rejected the gateway's credentials ({status})."
    message = ""
    try:
        data = orjson.loads(body)
        error = data.get("error") if isinstance(data, dict) else None
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            message = error["message"]
        elif isinstance(error, str):
            message = error
    except orjson.JSONDecodeError:
        pass
    message = redact(message[:500]) if message else f"status {status}"
    return f"Upstream {deployment.label} answered {status}: {message}"


class OpenAICompatProvider:
    def __init__(self, *, pool_size: int = 1000) -> None:
        self._pool_size = pool_size
        self._session: aiohttp.ClientSession | None = None
        self._targets: dict[str, _Target] = {}

    def _client(self) -> aiohttp.ClientSession:
        # Created lazily inside the running loop (aiohttp binds a session to its loop).
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(
                limit=self._pool_size,
                limit_per_host=0,
                ttl_dns_cache=300,
                keepalive_timeout=60,
                enable_cleanup_closed=True,
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                skip_auto_headers=("User-Agent",),
                auto_decompress=True,
                timeout=aiohttp.ClientTimeout(total=None),
            )
        return self._session

    def _target(self, deployment: Deployment) -> _Target:
        target = self._targets.get(deployment.id)
        if target is None or target.chat_url != f"{deployment.base_url}/chat/completions":
            headers = {"Content-Type": "application/json", "Accept": "application/json"}
            if deployment.api_key:
                headers["Authorization"] = f"Bearer {deployment.api_key}"
            target = _Target(
                chat_url=f"{deployment.base_url}/chat/completions",
                embeddings_url=f"{deployment.base_url}/embeddings",
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=deployment.timeout_s, sock_connect=deployment.connect_timeout_s),
                # A stream may run for minutes: bound the wait for each read, not the whole.
                stream_timeout=aiohttp.ClientTimeout(
                    total=None, sock_connect=deployment.connect_timeout_s, sock_read=deployment.timeout_s
                ),
            )
            self._targets[deployment.id] = target
        return target

    async def close(self) -> None:
        if self._session is not None and not self._session.closed:
            await self._session.close()

    async def chat(self, deployment: Deployment, ctx: RequestContext) -> Reply:
        target = self._target(deployment)
        body = dict(ctx.body)
        body["model"] = deployment.model
        if ctx.stream:
            if not ctx.include_usage:
                # Ask for usage anyway: spend must be counted from what the upstream reports.
                options = body.get("stream_options")
                body["stream_options"] = {**(options if isinstance(options, dict) else {}), "include_usage": True}
            return await self._stream(deployment, target, body, ctx)
        return await self._json(deployment, target.chat_url, target, body, ctx, "choices")

    async def embeddings(self, deployment: Deployment, ctx: RequestContext) -> Reply:
        target = self._target(deployment)
        body = dict(ctx.body)
        body["model"] = deployment.model
        return await self._json(deployment, target.embeddings_url, target, body, ctx, "data")

    async def _json(
        self,
        deployment: Deployment,
        url: str,
        target: _Target,
        body: dict[str, Any],
        ctx: RequestContext,
        required: str,
    ) -> JsonReply:
        try:
            async with self._client().post(
                url, data=orjson.dumps(body), headers=target.headers, timeout=target.timeout
            ) as response:
                raw = await response.read()
                status = response.status
                retry_after = response.headers.get("retry-after")
        except UpstreamError:
            raise
        except Exception as exc:
            raise _translate(exc, deployment) from None
        if status != 200:
            raise _rejected(status, raw, retry_after, deployment)
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise UpstreamMalformed(f"Upstream {deployment.label} returned a body that is not JSON.") from None
        if not isinstance(data, dict) or not isinstance(data.get(required), list):
            raise UpstreamMalformed(f"Upstream {deployment.label} returned JSON without a '{required}' list.")
        ctx.usage = usage_from(data)
        return JsonReply(200, raw, data)

    async def _stream(
        self, deployment: Deployment, target: _Target, body: dict[str, Any], ctx: RequestContext
    ) -> StreamReply:
        try:
            response = await self._client().post(
                target.chat_url, data=orjson.dumps(body), headers=target.headers, timeout=target.stream_timeout
            )
        except Exception as exc:
            raise _translate(exc, deployment) from None
        try:
            if response.status != 200:
                raw = await response.read()
                raise _rejected(response.status, raw, response.headers.get("retry-after"), deployment)
            if not response.content_type.startswith("text/event-stream"):
                raise UpstreamMalformed(
                    f"Upstream {deployment.label} answered a streaming request with {response.content_type!r}."
                )
            events = relay_events(_pieces(response, deployment), ctx, drop_usage_event=not ctx.include_usage)
            # Wait for the first event before answering: until a byte reached the caller the
            # request can still be retried or sent to another deployment.
            first = await anext(events)
        except UpstreamError:
            response.close()
            raise
        except StopAsyncIteration:
            response.close()
            raise UpstreamMalformed(f"Upstream {deployment.label} sent an empty stream.") from None
        except Exception as exc:
            response.close()
            raise _translate(exc, deployment) from None
        return StreamReply(_prepend(first, events, response))


async def _pieces(response: aiohttp.ClientResponse, deployment: Deployment) -> AsyncIterator[bytes]:
    try:
        async for piece in response.content.iter_any():
            yield piece
    except UpstreamError:
        raise
    except Exception as exc:
        raise _translate(exc, deployment) from None


async def _prepend(
    first: bytes, rest: AsyncIterator[bytes], response: aiohttp.ClientResponse
) -> AsyncIterator[bytes]:
    try:
        yield first
        async for events in rest:
            yield events
    finally:
        # Closing (not releasing) drops the connection if the stream was cut short, which is
        # what cancels the upstream's generation when the caller goes away.
        response.close()


def _rejected(status: int, raw: bytes, retry_after: str | None, deployment: Deployment) -> UpstreamRejected:
    headers = {"retry-after": retry_after} if retry_after and status == 429 else {}
    return UpstreamRejected(_upstream_message(status, raw, deployment), status=status, headers=headers)


def _translate(exc: BaseException, deployment: Deployment) -> UpstreamError:
    if isinstance(exc, UpstreamError):
        return exc
    if isinstance(exc, asyncio.TimeoutError | aiohttp.ServerTimeoutError):
        return UpstreamTimeout(f"Upstream {deployment.label} timed out.")
    if isinstance(exc, aiohttp.ClientConnectorError):
        return UpstreamUnavailable(f"Cannot connect to the upstream for {deployment.label}.")
    if isinstance(exc, aiohttp.ClientPayloadError | aiohttp.ServerDisconnectedError | aiohttp.ClientOSError):
        return UpstreamUnavailable(f"The upstream for {deployment.label} dropped the connection.")
    if isinstance(exc, aiohttp.ClientError):
        return UpstreamUnavailable(f"Upstream {deployment.label} failed: {type(exc).__name__}.")
    raise exc
