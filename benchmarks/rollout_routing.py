"""What the route stage costs with one active rollout (target: <= 20 µs of CPU per request at the median).

Runs the route stage (``gateway.routing.Route``) in process, with the runtime's strategy
(``RolloutStrategy``), on an alias with a running rollout whose ``match`` names a team: per
request the match check, the sticky draw (BLAKE2b over rollout id and user), the plan, and the
two response headers. For comparison, the same stage with the plain weighted strategy on an
alias without a rollout. Building the request context is not counted (every request pays it).
CPU is ``time.thread_time`` per batch of requests, divided by the batch; the median and p99
are over batches.

    .venv/bin/python -m benchmarks.rollout_routing [--requests 200000]
"""

from __future__ import annotations

import argparse
import asyncio
import time

from benchmarks.loadgen import median_p99_row
from gateway.auth import Principal
from gateway.catalog import Catalog, build_catalog
from gateway.config.policies import ModelsFile, PolicyBundle, TeamsFile
from gateway.config.rollouts import RolloutsFile
from gateway.context import Endpoint, JsonReply, Reply, RequestContext
from gateway.rollouts import RolloutBook
from gateway.routing import RolloutStrategy, Route, RoutingStrategy, Weighted

BATCH = 1000


def catalog() -> Catalog:
    deployments = [{"provider": "mock", "model": "a"}, {"provider": "mock", "model": "b"},
                   {"provider": "mock", "model": "next", "weight": 0}]
    return build_catalog(PolicyBundle(
        models=ModelsFile.model_validate({"aliases": {"chat": {"deployments": deployments},
                                                      "plain": {"deployments": deployments}}}),
        teams=TeamsFile.model_validate({"teams": {"support": {}}}),
        rollouts=RolloutsFile.model_validate({"rollouts": {"chat-next": {
            "target": {"alias": "chat", "canary": {"deployment": 2}},
            "steps": [{"weight": 10}, {"weight": 50}], "match": {"teams": ["supp*"]},
        }}}),
    ))


async def measure(strategy: RoutingStrategy, cat: Catalog, alias: str, requests: int) -> list[float]:
    """CPU µs per request, one figure per batch."""
    stage = Route(strategy)
    principal = Principal("key_bench", "support", frozenset({"app"}))
    reply = JsonReply(200, b"{}")

    async def answer(ctx: RequestContext) -> Reply:
        return reply

    figures = []
    for start in range(0, requests, BATCH):
        contexts = []
        for i in range(start, start + BATCH):
            ctx = RequestContext(request_id=f"r{i}", endpoint=Endpoint.CHAT, raw_body=b"", authorization=None,
                                 catalog=cat, alias=cat.aliases[alias], principal=principal)
            ctx.user = f"user-{i % 5000}"
            contexts.append(ctx)
        began = time.thread_time()
        for ctx in contexts:
            await stage(ctx, answer)
        figures.append((time.thread_time() - began) / BATCH * 1e6)
    return figures


def measure_counters(in_rollout: bool, requests: int) -> list[float]:
    """CPU µs per request of the record stage's per-variant counters (``VariantCounters``)."""
    from prometheus_client import CollectorRegistry

    from gateway.rollouts.counters import VariantCounters

    counters = VariantCounters(CollectorRegistry())
    cat = catalog()
    principal = Principal("key_bench", "support", frozenset({"app"}))
    figures = []
    for start in range(0, requests, BATCH):
        contexts = []
        for i in range(start, start + BATCH):
            ctx = RequestContext(request_id=f"r{i}", endpoint=Endpoint.CHAT, raw_body=b"", authorization=None,
                                 catalog=cat, alias=cat.aliases["chat"], principal=principal)
            ctx.status = 500 if i % 100 == 0 else 200
            if in_rollout:
                ctx.rollout_id, ctx.variant = "chat-next", "canary" if i % 10 == 0 else "stable"
            contexts.append(ctx)
        began = time.thread_time()
        for ctx in contexts:
            counters.record(ctx)
        figures.append((time.thread_time() - began) / BATCH * 1e6)
    return figures


async def main(requests: int) -> None:
    cat = catalog()
    rollout = RolloutStrategy(RolloutBook())
    await measure(rollout, cat, "chat", 20 * BATCH)  # warm-up
    print("| route stage | CPU µs/request, median of batches | p99 of batches |")
    print("|---|--:|--:|")
    print(median_p99_row("rollout strategy, alias in a running rollout", await measure(rollout, cat, "chat", requests)))
    print(median_p99_row("rollout strategy, alias without a rollout", await measure(rollout, cat, "plain", requests)))
    print(median_p99_row("weighted strategy (before rollouts)", await measure(Weighted(), cat, "plain", requests)))
    print()
    print("| record stage: per-variant counters | CPU µs/request, median of batches | p99 of batches |")
    print("|---|--:|--:|")
    print(median_p99_row("request in a rollout", measure_counters(True, requests)))
    print(median_p99_row("request outside any rollout", measure_counters(False, requests)))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=200_000)
    asyncio.run(main(parser.parse_args().requests))
