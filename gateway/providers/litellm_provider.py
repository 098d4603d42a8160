"""Every non-OpenAI provider (Anthropic, Bedrock, Vertex, ...) through ``litellm``.

litellm is imported when this module is, and this module is imported only when the catalog
has such a deployment: its import costs seconds and a few hundred MiB, which a gateway that
only talks to OpenAI-compatible upstreams should never pay. litellm's answers are already in
OpenAI's shape; they are serialised once with orjson. litellm's exceptions are translated
into the gateway's here and nowhere else.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import orjson

from gateway.context import Endpoint, JsonReply, Reply, RequestContext, StreamReply, Usage
from gateway.errors import (
    UpstreamError,
    UpstreamMalformed,
    UpstreamRejected,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from gateway.heap import import_litellm
from gateway.providers.base import answer_too_large
from gateway.providers.openai_fields import CHAT_FIELDS, EMBEDDING_FIELDS
from gateway.redact import redact
from gateway.wire import DONE_EVENT, usage_from

if TYPE_CHECKING:
    from gateway.catalog import Deployment

litellm = import_litellm()  # offline, once, and frozen out of the collector's generations

litellm.telemetry = False
litellm.suppress_debug_info = True
litellm.drop_params = True  # an OpenAI parameter the provider lacks is dropped, not an error

# Request fields the gateway sets itself from the deployment and the request context.
_GATEWAY_FIELDS = frozenset({"model", "messages", "stream", "stream_options", "input"})
# What a caller's body may contribute: OpenAI's fields only (an allow-list, see openai_fields).
_CHAT_PARAMS = CHAT_FIELDS - _GATEWAY_FIELDS
_EMBEDDING_PARAMS = EMBEDDING_FIELDS - _GATEWAY_FIELDS


def _dump(obj: Any, *, chunk: bool = False) -> dict[str, Any]:
    """litellm's object as OpenAI's wire shape.

    litellm fills optional fields with ``None`` where OpenAI leaves them out (and OpenAI's
    schema rejects those ``null``s), so ``None``s are dropped and the few fields OpenAI
    requires even when empty are put back.
    """
    data: dict[str, Any] = obj.model_dump(exclude_none=True) if hasattr(obj, "model_dump") else dict(obj)
    for choice in data.get("choices") or ():
        if chunk:
            choice.setdefault("finish_reason", None)
            choice.setdefault("delta", {})
        else:
            choice.setdefault("logprobs", None)
            message = choice.setdefault("message", {})
            message.setdefault("content", None)
            message.setdefault("refusal", None)
    return data


class LiteLLMProvider:
    def _params(self, deployment: Deployment, ctx: RequestContext) -> dict[str, Any]:
        """litellm's arguments: the caller's OpenAI fields, then the deployment's target and
        credentials. Nothing else from the body: litellm would take ``api_base``,
        ``extra_headers`` and the like from it, and send the deployment's key wherever a caller
        pointed it."""
        allowed = _CHAT_PARAMS if ctx.endpoint is Endpoint.CHAT else _EMBEDDING_PARAMS
        params = {key: value for key, value in ctx.body.items() if key in allowed}
        params["model"] = f"{deployment.provider}/{deployment.model}"
        params["timeout"] = deployment.timeout_s
        params["num_retries"] = 0  # retries and fallback are the gateway's, across deployments
        if deployment.base_url:
            params["api_base"] = deployment.base_url
        if deployment.api_key:
            params["api_key"] = deployment.api_key
        return params

    async def chat(self, deployment: Deployment, ctx: RequestContext) -> Reply:
        params = self._params(deployment, ctx)
        params["messages"] = ctx.body.get("messages", [])
        if ctx.stream:
            params["stream"] = True
            params["stream_options"] = {"include_usage": True}
            try:
                stream = await litellm.acompletion(**params)
                iterator = stream.__aiter__()
                first = await anext(iterator)
            except StopAsyncIteration:
                raise UpstreamMalformed(f"Upstream {deployment.label} sent an empty stream.") from None
            except Exception as exc:
                raise _translate(exc, deployment) from None
            return StreamReply(self._events(first, iterator, ctx, deployment))
        try:
            response = await litellm.acompletion(**params)
        except Exception as exc:
            raise _translate(exc, deployment) from None
        data = _dump(response)
        if not isinstance(data.get("choices"), list):
            raise UpstreamMalformed(f"Upstream {deployment.label} returned no choices.")
        ctx.usage = usage_from(data)
        return JsonReply(200, _bounded(orjson.dumps(data), deployment), data)

    async def embeddings(self, deployment: Deployment, ctx: RequestContext) -> Reply:
        params = self._params(deployment, ctx)
        params["input"] = ctx.body.get("input")
        try:
            response = await litellm.aembedding(**params)
        except Exception as exc:
            raise _translate(exc, deployment) from None
        data = _dump(response)
        usage = data.get("usage") or {}
        ctx.usage = Usage(int(usage.get("prompt_tokens") or 0), 0)
        return JsonReply(200, _bounded(orjson.dumps(data), deployment), data)

    async def _events(
        self, first: Any, rest: AsyncIterator[Any], ctx: RequestContext, deployment: Deployment
    ) -> AsyncIterator[bytes]:
        chunk: Any = first
        relayed = 0
        try:
            while True:
                data = _dump(chunk, chunk=True)
                usage = data.pop("usage", None)
                if isinstance(usage, dict) and usage.get("prompt_tokens") is not None:
                    ctx.usage = Usage(int(usage["prompt_tokens"]), int(usage.get("completion_tokens") or 0))
                if data.get("choices"):
                    if ctx.include_usage:
                        data["usage"] = None
                    event = b"data: " + orjson.dumps(data) + b"\n\n"
                    relayed += len(event)
                    if relayed > deployment.max_answer_bytes:
                        # litellm reads the upstream itself: the bound is on what it hands over.
                        raise answer_too_large(deployment)
                    yield event
                try:
                    chunk = await anext(rest)
                except StopAsyncIteration:
                    break
        except UpstreamError:
            raise
        except Exception as exc:
            raise _translate(exc, deployment) from None
        if ctx.include_usage and ctx.usage is not None:
            final: dict[str, Any] = {
                "id": data.get("id"),
                "object": "chat.completion.chunk",
                "created": data.get("created"),
                "model": data.get("model"),
                "choices": [],
                "usage": {
                    "prompt_tokens": ctx.usage.prompt_tokens,
                    "completion_tokens": ctx.usage.completion_tokens,
                    "total_tokens": ctx.usage.total_tokens,
                },
            }
            yield b"data: " + orjson.dumps(final) + b"\n\n"
        yield DONE_EVENT

    async def close(self) -> None:
        return None


def _bounded(body: bytes, deployment: Deployment) -> bytes:
    """``body`` unless it passes ``max_answer_bytes``. litellm has read the whole answer by then
    (the memory is spent): the bound keeps what a caller may get the same on every provider."""
    if len(body) > deployment.max_answer_bytes:
        raise answer_too_large(deployment)
    return body


def _translate(exc: BaseException, deployment: Deployment) -> UpstreamError:
    if isinstance(exc, UpstreamError):
        return exc
    status = getattr(exc, "status_code", None)
    message = redact(str(getattr(exc, "message", "") or exc))[:500]
    if isinstance(exc, asyncio.TimeoutError | litellm.exceptions.Timeout) or status == 408:
        return UpstreamTimeout(f"Upstream {deployment.label} timed out.")
    if isinstance(exc, litellm.exceptions.APIConnectionError) and not isinstance(status, int):
        return UpstreamUnavailable(f"Cannot reach the upstream for {deployment.label}.")
    if isinstance(status, int) and status >= 400:
        if status in (401, 403):
            message = "rejected the gateway's credentials"
        return UpstreamRejected(f"Upstream {deployment.label} answered {status}: {message}", status=status)
    return UpstreamUnavailable(f"Upstream {deployment.label} failed: {type(exc).__name__}.")
