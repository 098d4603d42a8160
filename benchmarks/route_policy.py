"""What data classes, fallbacks across aliases, budget downgrades and context windows add to a
request's CPU (issue 12).

Runs the route stage (``gateway.routing.Route``) in process, as ``benchmarks.rollout_routing``
does, on the same alias under four policies: none (data classes off, no fallbacks, no
downgrade: what every request paid before), data classes on (the request's class from the
team's default and an ``x-data-class`` header, the plan filtered), the same plus two fallback
aliases appended, and the same plus a budget downgrade rule checked for the team (the spend
share read from a cached counter). Then the usage stage's context-window check for a small
request on deployments with windows (the decision not to count), and the upstream stage's
per-attempt guard (``Deployment.admits``). Building the request context is not counted.
CPU is ``time.thread_time`` per batch of requests, divided by the batch; the median and p99
are over batches.

    .venv/bin/python -m benchmarks.route_policy [--requests 200000]
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Callable
from typing import Any

from benchmarks.loadgen import median_p99_row
from gateway.auth import Principal
from gateway.budgets import BudgetBook, Downgrades
from gateway.budgets.backend import ScopeState
from gateway.catalog import Catalog, build_catalog
from gateway.config.policies import DataClassesFile, ModelsFile, PolicyBundle, TeamsFile
from gateway.context import Endpoint, JsonReply, Reply, RequestContext
from gateway.routing import Route, Weighted
from gateway.usage.stage import _window_may_matter

BATCH = 1000
CLASSES = {
    "classes": ["public", "internal", "confidential", "restricted"],
    "rules": {"restricted": {"require_tags": {"hosting": ["self"]}}},
}


def catalog(*, classes: bool, fallbacks: bool, downgrade: bool) -> Catalog:
    tags: dict[str, Any] = {"max_data_class": "restricted", "tags": {"hosting": "self"}} if classes else {}
    deployments = [
        {"provider": "mock", "model": "a", "max_input_tokens": 128_000, **tags},
        {"provider": "mock", "model": "b", "max_input_tokens": 128_000, **tags},
    ]
    aliases: dict[str, Any] = {
        "chat": {"deployments": deployments, "fallbacks": ["spare", "last"] if fallbacks else []},
        "spare": {"deployments": deployments},
        "last": {"deployments": deployments},
    }
    team: dict[str, Any] = {"data_class": "internal"} if classes else {}
    if downgrade:
        team["budget"] = {"limit_usd": 100, "downgrade": {"at_pct": 80, "from": "chat", "to": "spare"}}
    return build_catalog(
        PolicyBundle(
            models=ModelsFile.model_validate({"aliases": aliases}),
            teams=TeamsFile.model_validate({"teams": {"support": team}}),
            data_classes=DataClassesFile.model_validate(CLASSES if classes else {}),
        )
    )


class CountersAt40Pct:
    """A budget backend's counter read: 40 % of the limit spent (no downgrade yet)."""

    name = "bench"

    async def snapshot(self, budget: Any, window: Any) -> dict[str, ScopeState]:
        return {"t": ScopeState(budget.team_scope.limit_nanos * 4 // 10, 0)}


def contexts(cat: Catalog, start: int, header: str | None) -> list[RequestContext]:
    principal = Principal("key_bench", "support", frozenset({"app"}))
    found = []
    for i in range(start, start + BATCH):
        ctx = RequestContext(
            request_id=f"r{i}",
            endpoint=Endpoint.CHAT,
            raw_body=b'{"model":"chat"}' * 8,
            authorization=None,
            catalog=cat,
            alias=cat.aliases["chat"],
            principal=principal,
        )
        ctx.data_class_header = header
        found.append(ctx)
    return found


async def measure(stage: Route, cat: Catalog, requests: int, header: str | None = None) -> list[float]:
    """CPU µs per request through the route stage, one figure per batch."""
    reply = JsonReply(200, b"{}")

    async def answer(ctx: RequestContext) -> Reply:
        return reply

    figures = []
    for start in range(0, requests, BATCH):
        batch = contexts(cat, start, header)
        began = time.thread_time()
        for ctx in batch:
            await stage(ctx, answer)
        figures.append((time.thread_time() - began) / BATCH * 1e6)
    return figures


def measure_sync(work: Callable[[RequestContext], object], cat: Catalog, requests: int) -> list[float]:
    """CPU µs per call of ``work`` on a routed request, one figure per batch."""
    figures = []
    for start in range(0, requests, BATCH):
        batch = contexts(cat, start, None)
        for ctx in batch:
            ctx.deployments = cat.aliases["chat"].deployments
            ctx.data_class = "internal"
        began = time.thread_time()
        for ctx in batch:
            work(ctx)
        figures.append((time.thread_time() - began) / BATCH * 1e6)
    return figures


async def main(requests: int) -> None:
    plain = catalog(classes=False, fallbacks=False, downgrade=False)
    classed = catalog(classes=True, fallbacks=False, downgrade=False)
    with_fallbacks = catalog(classes=True, fallbacks=True, downgrade=False)
    everything = catalog(classes=True, fallbacks=True, downgrade=True)
    downgrades = Downgrades(CountersAt40Pct(), BudgetBook(), ttl_s=3600)  # type: ignore[arg-type]
    await measure(Route(Weighted()), plain, 20 * BATCH)  # warm-up
    print("| route stage (weighted strategy) | CPU µs/request, median of batches | p99 of batches |")
    print("|---|--:|--:|")
    print(
        median_p99_row(
            "no data classes, no fallbacks, no downgrade (as before)", await measure(Route(Weighted()), plain, requests)
        )
    )
    print(
        median_p99_row(
            "data classes (team default, x-data-class header)",
            await measure(Route(Weighted()), classed, requests, "confidential"),
        )
    )
    print(
        median_p99_row(
            "data classes + two fallback aliases",
            await measure(Route(Weighted()), with_fallbacks, requests, "confidential"),
        )
    )
    print(
        median_p99_row(
            "data classes + fallbacks + a downgrade rule for the alias",
            await measure(Route(Weighted(), downgrades=downgrades), everything, requests, "confidential"),
        )
    )
    print(
        median_p99_row(
            "usage stage: context-window check, small request (not counted)",
            measure_sync(_window_may_matter, classed, requests),
        )
    )
    print(
        median_p99_row(
            "upstream stage: data-class guard, one attempt",
            measure_sync(lambda ctx: ctx.deployments[0].admits(ctx.data_class), classed, requests),
        )
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=200_000)
    asyncio.run(main(parser.parse_args().requests))
