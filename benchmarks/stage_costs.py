"""CPU per request of the request path's seams, in process: the usage stage, the answer tap and
the core handler, over an upstream that answers at once (JSON, and a 9-batch stream).

    .venv/bin/python -m benchmarks.stage_costs

Each line adds one seam to the previous one; differences are the seam's cost. Figures in
benchmarks/README.md ("Per-request cost of the request path's seams").
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import orjson

from gateway.answer import tap_reply
from gateway.catalog import build_catalog
from gateway.config.policies import ModelsFile, PolicyBundle, TeamsFile
from gateway.context import Endpoint, JsonReply, Reply, RequestContext, StreamReply, Usage
from gateway.core import Core
from gateway.pipeline import build_pipeline
from gateway.usage import MeterUsage
from gateway.usage.tokens import TokenCounter

CATALOG = build_catalog(PolicyBundle(
    models=ModelsFile.model_validate({"aliases": {"priced": {"deployments": [
        {"provider": "mock", "model": "gpt-4o-mini", "input_cost_per_token": 1e-6, "output_cost_per_token": 1e-5},
    ]}}}),
    teams=TeamsFile.model_validate({"teams": {"t": {}}}),
))
DEPLOYMENT = CATALOG.aliases["priced"].deployments[0]
DATA: dict[str, Any] = {
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "Paris."}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 30, "completion_tokens": 2},
}
BODY = orjson.dumps(DATA)
CHUNKS = [
    *(b'data: {"choices":[{"index":0,"delta":{"content":"w%d "}}]}\n\n' % i for i in range(8)),
    b'data: {"choices":[],"usage":{"prompt_tokens":30,"completion_tokens":8}}\n\ndata: [DONE]\n\n',
]


async def answer_json(ctx: RequestContext) -> Reply:
    ctx.deployment = DEPLOYMENT
    ctx.usage = Usage(30, 2)
    return JsonReply(200, BODY, DATA)


async def answer_stream(ctx: RequestContext) -> Reply:
    ctx.deployment = DEPLOYMENT
    ctx.usage = Usage(30, 8)

    async def events() -> AsyncIterator[bytes]:
        for chunk in CHUNKS:
            yield chunk

    return StreamReply(events())


def tapped(upstream: Callable[[RequestContext], Awaitable[Reply]]) -> Callable[[RequestContext], Awaitable[Reply]]:
    async def call(ctx: RequestContext) -> Reply:
        reply = await upstream(ctx)
        tap_reply(ctx, reply)
        return reply

    return call


def context() -> RequestContext:
    return RequestContext(request_id="r", endpoint=Endpoint.CHAT, raw_body=b"{}", authorization=None, catalog=CATALOG)


async def cpu_us(run: Callable[[], Awaitable[None]], n: int = 20_000) -> float:
    for _ in range(1_000):
        await run()
    started = time.process_time()
    for _ in range(n):
        await run()
    return (time.process_time() - started) / n * 1e6


async def main() -> None:
    meter = MeterUsage(TokenCounter())
    cases: dict[str, Callable[[RequestContext], Awaitable[Reply]]] = {
        "json: upstream only": answer_json,
        "json: + usage stage": build_pipeline([meter], answer_json),
        "json: + usage + answer tap": build_pipeline([meter], tapped(answer_json)),
        "json: + usage + tap + core handler": Core(build_pipeline([meter], tapped(answer_json))).handle,
        "stream: upstream only": answer_stream,
        "stream: + usage + tap + core handler": Core(build_pipeline([meter], tapped(answer_stream))).handle,
    }

    def runner(handler: Callable[[RequestContext], Awaitable[Reply]]) -> Callable[[], Awaitable[None]]:
        async def run() -> None:
            ctx = context()
            reply = await handler(ctx)
            if isinstance(reply, StreamReply):
                async for _ in reply.events:
                    pass
            ctx.finish()

        return run

    for name, handler in cases.items():
        figures = [await cpu_us(runner(handler)) for _ in range(3)]
        print(f"{name:40s} " + "  ".join(f"{figure:6.2f}" for figure in figures) + "  µs CPU per request")


if __name__ == "__main__":
    asyncio.run(main())
