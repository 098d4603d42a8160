"""The fast path: any OpenAI-compatible upstream (OpenAI, vLLM, Ollama, the fake).

One client per process (``http1``: pooled keep-alive connections; why not aiohttp is said
there); per deployment the URLs and the request's fixed head are built once. The request body
is serialised once with orjson; a JSON answer is parsed once (to check it and read usage) and
its original bytes are passed on untouched. The client's exceptions are translated into the
gateway's here and nowhere else.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

from gateway.context import JsonReply, Reply, RequestContext, StreamReply
from gateway.errors import (
    UpstreamError,
    UpstreamMalformed,
    UpstreamRejected,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from gateway.providers import http1
from gateway.providers.base import answer_too_large
from gateway.providers.sse import relay_events
from gateway.redact import redact
from gateway.wire import usage_from

if TYPE_CHECKING:
    from gateway.catalog import Deployment

_JSON = b"application/json"


@dataclass(frozen=True, slots=True)
class _Target:
    base_url: str
    api_key: str | None
    chat: http1.Target
    embeddings: http1.Target


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
        # pool_size: idle keep-alive connections kept, across upstreams.
        self._client = http1.Http1Client(max_idle=pool_size)
        self._targets: dict[str, _Target] = {}

    def _target(self, deployment: Deployment) -> _Target:
        target = self._targets.get(deployment.id)
        if target is None or target.base_url != deployment.base_url or target.api_key != deployment.api_key:
            headers = {"Content-Type": "application/json", "Accept": "application/json"}
            if deployment.api_key:
                headers["Authorization"] = f"Bearer {deployment.api_key}"
            try:
                target = _Target(
                    base_url=deployment.base_url,
                    api_key=deployment.api_key,
                    chat=http1.Target.of(f"{deployment.base_url}/chat/completions", headers),
                    embeddings=http1.Target.of(f"{deployment.base_url}/embeddings", headers),
                )
            except ValueError:
                # Checked when the policy is loaded; a key or URL that still cannot make a request
                # is the deployment's fault, and says nothing of the key.
                raise UpstreamUnavailable(f"The upstream for {deployment.label} is not a usable http(s) URL.") from None
            self._targets[deployment.id] = target
        return target

    async def close(self) -> None:
        await self._client.close()

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
        return await self._json(deployment, target.chat, body, ctx, "choices")

    async def embeddings(self, deployment: Deployment, ctx: RequestContext) -> Reply:
        target = self._target(deployment)
        body = dict(ctx.body)
        body["model"] = deployment.model
        return await self._json(deployment, target.embeddings, body, ctx, "data")

    async def _json(
        self,
        deployment: Deployment,
        target: http1.Target,
        body: dict[str, Any],
        ctx: RequestContext,
        required: str,
    ) -> JsonReply:
        try:
            answer = await self._client.post(
                target, orjson.dumps(body), timeout_s=deployment.timeout_s,
                connect_timeout_s=deployment.connect_timeout_s, max_body_bytes=deployment.max_answer_bytes,
            )
        except Exception as exc:
            raise _translate(exc, deployment) from None
        raw, status = answer.body, answer.status
        retry_after = _header(answer.headers, b"retry-after")
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
            # A stream may run for minutes: bound the wait for each read, not the whole.
            response = await self._client.post_stream(
                target.chat, orjson.dumps(body), read_timeout_s=deployment.timeout_s,
                connect_timeout_s=deployment.connect_timeout_s, max_body_bytes=deployment.max_answer_bytes,
            )
        except Exception as exc:
            raise _translate(exc, deployment) from None
        try:
            if response.status != 200:
                raw = await response.read()
                raise _rejected(response.status, raw, _header(response.headers, b"retry-after"), deployment)
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


async def _pieces(response: http1.StreamAnswer, deployment: Deployment) -> AsyncIterator[bytes]:
    try:
        async for piece in response.pieces():
            yield piece
    except UpstreamError:
        raise
    except Exception as exc:
        raise _translate(exc, deployment) from None


async def _prepend(
    first: bytes, rest: AsyncIterator[bytes], response: http1.StreamAnswer
) -> AsyncIterator[bytes]:
    try:
        yield first
        async for events in rest:
            yield events
    finally:
        # Closing drops the connection if the stream was cut short (else it goes back to the
        # pool), which is what cancels the upstream's generation when the caller goes away.
        response.close()


def _rejected(status: int, raw: bytes, retry_after: str | None, deployment: Deployment) -> UpstreamRejected:
    headers = {"retry-after": retry_after} if retry_after and status == 429 else {}
    return UpstreamRejected(_upstream_message(status, raw, deployment), status=status, headers=headers)


def _header(headers: dict[bytes, bytes], name: bytes) -> str | None:
    value = headers.get(name)
    return value.decode("latin-1") if value is not None else None


def _translate(exc: BaseException, deployment: Deployment) -> UpstreamError:
    if isinstance(exc, UpstreamError):
        return exc
    if isinstance(exc, asyncio.TimeoutError):
        return UpstreamTimeout(f"Upstream {deployment.label} timed out.")
    if isinstance(exc, http1.ConnectFailed):
        return UpstreamUnavailable(f"Cannot connect to the upstream for {deployment.label}.")
    if isinstance(exc, http1.Disconnected | ConnectionError):
        return UpstreamUnavailable(f"The upstream for {deployment.label} dropped the connection.")
    if isinstance(exc, http1.AnswerTooLarge):
        return answer_too_large(deployment)
    if isinstance(exc, http1.ProtocolFailed):
        return UpstreamMalformed(f"Upstream {deployment.label} sent an answer that is not valid HTTP: {exc}.")
    raise exc
