"""The built-in ``mock`` provider: answers in-process, offline and deterministically.

It exists so the quick start works with no key and no network, and so evaluations and
tests have a model whose answer is known. Latency and failures are injected per deployment
(``mock:`` in models.yaml), with the same generator the fake upstream server uses.

Its answers are built in the gateway's own process, so they are bounded as an upstream's are
read: the deployment's ``max_answer_bytes`` (502 ``upstream_answer_too_large``, or a stream's
closing error event, as for every provider), checked before an embedding's vectors are built;
and a JSON schema asking for more than an answer writes (``mock_responses.SchemaBudget``) is
refused with a 400, as an upstream refuses a request it cannot serve.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import orjson

from gateway.context import JsonReply, Reply, RequestContext, StreamReply, Usage
from gateway.errors import UpstreamRejected
from gateway.providers import mock_responses
from gateway.providers.base import answer_too_large
from gateway.wire import DONE_EVENT, usage_from

if TYPE_CHECKING:
    from gateway.catalog import Deployment


class MockProvider:
    async def _behave(self, deployment: Deployment) -> None:
        behaviour = deployment.mock
        if behaviour.latency_ms:
            await asyncio.sleep(behaviour.latency_ms / 1000)
        if behaviour.error_rate and random.random() < behaviour.error_rate:
            raise UpstreamRejected(
                f"Upstream {deployment.label} answered {behaviour.error_status}: injected mock failure",
                status=behaviour.error_status,
            )

    async def chat(self, deployment: Deployment, ctx: RequestContext) -> Reply:
        await self._behave(deployment)
        try:
            if ctx.stream:
                chunks = mock_responses.chat_stream_chunks(
                    {**ctx.body, "stream_options": {"include_usage": True}},
                    model=deployment.model,
                    chunks=deployment.mock.stream_chunks,
                )
                return StreamReply(self._events(chunks, ctx, deployment))
            data = mock_responses.chat_completion(ctx.body, model=deployment.model)
        except ValueError as exc:
            raise _rejected(exc) from None
        return self._json(deployment, ctx, data, usage_from(data))

    async def embeddings(self, deployment: Deployment, ctx: RequestContext) -> Reply:
        await self._behave(deployment)
        try:
            if mock_responses.embeddings_size_at_least(ctx.body) > deployment.max_answer_bytes:
                raise answer_too_large(deployment)  # before building vectors that would not be sent
            data = mock_responses.embeddings(ctx.body, model=deployment.model)
        except ValueError as exc:
            raise _rejected(exc) from None
        usage = data.get("usage") or {}
        return self._json(deployment, ctx, data, Usage(int(usage.get("prompt_tokens", 0)), 0))

    def _json(self, deployment: Deployment, ctx: RequestContext, data: dict[str, Any], usage: Usage | None) -> Reply:
        body = orjson.dumps(data)
        if len(body) > deployment.max_answer_bytes:
            raise answer_too_large(deployment)
        ctx.usage = usage
        return JsonReply(200, body, data)

    async def _events(
        self, chunks: list[dict[str, object]], ctx: RequestContext, deployment: Deployment
    ) -> AsyncIterator[bytes]:
        delay = deployment.mock.latency_ms / 10000 if deployment.mock.latency_ms else 0.0
        relayed = 0
        for chunk in chunks:
            usage = chunk.get("usage")
            if isinstance(usage, dict):
                ctx.usage = Usage(int(usage.get("prompt_tokens", 0)), int(usage.get("completion_tokens", 0)))
                if not ctx.include_usage:
                    continue
            elif not ctx.include_usage:
                chunk = {key: value for key, value in chunk.items() if key != "usage"}
            if delay:
                await asyncio.sleep(delay)
            event = mock_responses.sse_event(chunk)
            relayed += len(event)
            if relayed > deployment.max_answer_bytes:
                raise answer_too_large(deployment)
            yield event
        yield DONE_EVENT

    async def close(self) -> None:
        return None


def _rejected(exc: ValueError) -> UpstreamRejected:
    """What a real upstream does with a body it cannot take: a 400 naming the problem."""
    return UpstreamRejected(str(exc), status=400)
