"""What budget enforcement costs per request: ``python -m benchmarks.budget_overhead``.

Against a real Redis, it times, over thousands of requests:

* ``reserve``   — the atomic admission script, awaited on the request path;
* ``settle``    — the commit script (actual cost in, reservation out), which the gateway sends
  from a background task after the answer; timed here as one awaited round trip;
* ``reserve+settle`` — both, one after the other: the whole enforcement cost per request;
* ``stage``     — the budget stage around an upstream that answers at once: prompt token
  counting, worst-case estimate and reserve (its settle is queued, not awaited);
* ``memory``    — reserve+settle with the in-process backend (no Redis);
* ``redis-py``  — the same reserve script through the shared redis-py client, for comparison
  with the pipelined connection the budgets use;

and the gateway process' CPU time per request, one at a time and with 64 in flight (CPU time
is what a busy machine distorts least: wall times there mostly measure waiting for a core).
Keys are created under a unique team and deleted afterwards; nothing else in the Redis database
is touched.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
import redis.asyncio as aioredis

from benchmarks.loadgen import percentiles
from benchmarks.servers import stage_catalog
from gateway.auth import Principal
from gateway.budgets.alerts import Alerts, BudgetMetrics
from gateway.budgets.memory_backend import MemoryBackend
from gateway.budgets.policy import BudgetBook, TeamBudget, team_budget
from gateway.budgets.redis_backend import RESERVE, RedisBackend, _Settlement, period_key, team_tag
from gateway.budgets.stage import Budget
from gateway.config.policies import BudgetSpec
from gateway.config.settings import BudgetSettings
from gateway.context import Endpoint, JsonReply, Reply, RequestContext, Usage
from gateway.pricing import to_nanos
from gateway.redis.wire import RedisWire
from gateway.storage import open_database
from gateway.usage import MeterUsage
from gateway.usage.tokens import TokenCounter

MESSAGES = [
    {"role": "system", "content": "You are a helpful assistant that answers briefly."},
    {"role": "user", "content": "What is the capital of France, and what is it known for?"},
]


def percentiles_us(samples: list[float]) -> dict[str, float]:
    """p50, p99 and mean of ``samples`` (seconds) in µs."""
    shares = percentiles(samples)
    return {f"{share}_us": round(shares[share] * 1e6, 1) for share in ("p50", "p99", "mean")}


async def timed(iterations: int, step: Callable[[], Awaitable[None]]) -> list[float]:
    for _ in range(min(200, iterations // 10)):  # warm up: connections, scripts, caches
        await step()
    samples = []
    for _ in range(iterations):
        started = time.perf_counter()
        await step()
        samples.append(time.perf_counter() - started)
    return samples


async def cpu_per_request(total: int, concurrency: int, step: Callable[[], Awaitable[None]]) -> float:
    per_worker = total // concurrency

    async def worker() -> None:
        for _ in range(per_worker):
            await step()

    started = time.process_time()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return round((time.process_time() - started) / (per_worker * concurrency) * 1e6, 1)


async def main(redis_url: str, iterations: int) -> dict[str, Any]:
    team = "bench-" + secrets.token_hex(4)
    budget: TeamBudget = team_budget(team, BudgetSpec(limit_usd=1e6, period="daily", hard=True))
    scopes = budget.scopes_for("key_bench", "bench")
    amount, cost = to_nanos(0.01), to_nanos(0.004)
    tmp = Path(tempfile.mkdtemp(prefix="budget-bench-"))
    db = await open_database(f"sqlite:///{tmp / 'ledger.db'}")
    alerts = Alerts(BudgetMetrics(None), webhook_timeout_s=1.0)

    async def no_rows(rows: list[dict[str, Any]]) -> None:
        return None

    backend = RedisBackend(
        RedisWire(redis_url, timeout_s=1.0),
        db,
        alerts,
        BudgetSettings(rebuild_settle_s=0.0),
        budgets=lambda: [budget],
        write_rows=no_rows,
    )
    results: dict[str, Any] = {"iterations": iterations, "load_average_before": os.getloadavg()[0]}

    async def reserve() -> Any:
        return await backend.reserve(budget, scopes, amount, request_id="r", key_id="key_bench", alias="bench")

    async def settle(reservation: Any) -> None:
        item = _Settlement(
            reservation.rid, budget, scopes, cost, "r", reservation.window, reservation.window, int(time.time() * 1000)
        )
        await backend._settle_chunk(team, [item])

    reserve_samples: list[float] = []
    settle_samples: list[float] = []

    async def both() -> None:
        started = time.perf_counter()
        reservation = await reserve()
        middle = time.perf_counter()
        await settle(reservation)
        reserve_samples.append(middle - started)
        settle_samples.append(time.perf_counter() - middle)

    cpu_started = time.process_time()
    total = await timed(iterations, both)
    results["cpu_us_per_request_sequential"] = round(
        (time.process_time() - cpu_started) / (iterations + min(200, iterations // 10)) * 1e6, 1
    )
    results["reserve"] = percentiles_us(reserve_samples[-iterations:])
    results["settle"] = percentiles_us(settle_samples[-iterations:])
    results["reserve+settle"] = percentiles_us(total)

    # The stage as the gateway runs it, around an upstream that answers at once.
    await backend.start()
    catalog = stage_catalog(team, {"budget": {"limit_usd": 1e6, "period": "daily"}})
    tokens = TokenCounter()
    tokens.require(catalog)
    stage = Budget(backend, MeterUsage(tokens), BudgetBook(), BudgetMetrics(None), default_max_output_tokens=4096)
    body = {"model": "bench", "messages": MESSAGES, "max_tokens": 200}
    raw = orjson.dumps(body)
    answer = orjson.dumps({"choices": [{"message": {"role": "assistant", "content": "Paris."}}]})

    async def upstream(ctx: RequestContext) -> Reply:
        ctx.deployment = ctx.deployments[0]
        ctx.usage = Usage(30, 2)
        ctx.cost = ctx.deployment.price.cost(30, 2)
        return JsonReply(200, answer, None)

    async def through_stage() -> None:
        ctx = RequestContext(
            request_id="bench", endpoint=Endpoint.CHAT, raw_body=raw, authorization=None, catalog=catalog
        )
        ctx.principal = Principal("key_bench", team, frozenset({"app"}))
        ctx.body = body
        ctx.alias = catalog.aliases["bench"]
        ctx.deployments = ctx.alias.deployments
        await stage(ctx, upstream)

    results["stage"] = percentiles_us(await timed(iterations, through_stage))
    results["cpu_us_per_request_64_in_flight"] = {
        "reserve+settle": await cpu_per_request(iterations, 64, both),
        "stage": await cpu_per_request(iterations, 64, through_stage),
    }
    await backend.close()

    memory = MemoryBackend(db, alerts)

    async def memory_both() -> None:
        reservation = await memory.reserve(budget, scopes, amount, request_id="r", key_id="key_bench", alias="bench")
        memory.settle(reservation, cost)  # type: ignore[arg-type]

    results["memory reserve+settle"] = percentiles_us(await timed(iterations, memory_both))

    client = aioredis.Redis.from_url(redis_url, socket_timeout=1.0)
    sha = await client.script_load(RESERVE.source)
    tag = team_tag(team)
    args: list[str | bytes | int | float] = ["rid", amount, 30_000, b"{}", 1, "t", to_nanos(1e6), 1]

    async def redis_py_reserve() -> None:
        await client.evalsha(sha, 3, period_key(team, budget.window()), f"{tag}:res", f"{tag}:resd", *args)

    results["redis-py reserve (comparison)"] = percentiles_us(await timed(iterations, redis_py_reserve))
    wire = RedisWire(redis_url, timeout_s=1.0)
    await wire.call("PING")

    async def wire_reserve() -> None:
        await wire.evalsha(RESERVE, [period_key(team, budget.window()), f"{tag}:res", f"{tag}:resd"], args)

    results["cpu_us_per_reserve_64_in_flight"] = {
        "budget connection": await cpu_per_request(iterations, 64, wire_reserve),
        "redis-py": await cpu_per_request(iterations, 64, redis_py_reserve),
    }
    await wire.close()
    keys = [key async for key in client.scan_iter(match=f"gwb:{{{team}}}*")]
    if keys:
        await client.delete(*keys)
    await client.aclose()
    await db.close()
    results["load_average_after"] = os.getloadavg()[0]
    return results


def run() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--iterations", type=int, default=5000)
    args = parser.parse_args()
    try:
        import uvloop

        results = uvloop.run(main(args.redis_url, args.iterations))
    except ImportError:
        results = asyncio.run(main(args.redis_url, args.iterations))
    print(orjson.dumps(results, option=orjson.OPT_INDENT_2).decode())


if __name__ == "__main__":
    run()
