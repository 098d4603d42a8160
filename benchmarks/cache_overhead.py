"""What the response cache costs and saves per request: ``python -m benchmarks.cache_overhead``.

Two measurements:

1. **Through the server.** Three ``gateway serve`` processes against one fake upstream: the
   cache turned off (``cache.enabled: false``), the embedded store, and Redis. Requests go
   one at a time over a kept-alive connection, round-robin across the scenarios so that load
   drift on the machine hits them alike, and the gateway's own time is read from the
   ``x-gateway-overhead-ms`` header (everything but the wait on the upstream):

   * ``off miss``    — a new question each time, cache stage not installed (the baseline);
   * ``memory miss`` / ``redis miss`` — a new question each time: lookup, miss, store;
   * ``memory hit`` / ``redis hit`` — the same question again: answered from the cache;
   * ``... hit stream`` — the same, asked with ``stream: true`` (replayed as SSE).

   "added on a miss" is the miss p50 minus the baseline p50. Then each scenario runs again as a
   block while the gateway process's CPU time is read from /proc: CPU per request is far less
   sensitive to other load on the machine than wall time.

2. **The stage alone**, in-process: the cache stage's ``__call__`` around an upstream that
   answers at once, for a hit and a miss, per backend. It isolates the cache's own cost from
   the rest of the gateway and from HTTP. A bare ``PING`` on the same kind of connection the
   Redis store uses shows how much of that is the round trip itself.

Redis entries are written under a unique team and purged afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import orjson
import yaml

from benchmarks.loadgen import percentiles
from benchmarks.procs import Server, free_port, start_server
from benchmarks.servers import stage_catalog, start_fake
from gateway.auth import Principal
from gateway.cache import Cache, MemoryStore, PurgeFilter, RedisStore
from gateway.cache.keys import team_scope
from gateway.cache.metrics import CacheMetrics
from gateway.context import Endpoint, JsonReply, Reply, RequestContext, Usage
from gateway.observe import Metrics

ADMIN_KEY = "bench-admin-" + secrets.token_hex(8)
MESSAGES = [
    {"role": "system", "content": "You are a helpful assistant that answers briefly."},
    {"role": "user", "content": "What is the capital of France, and what is it known for?"},
]



def percentiles_ms(samples: list[float]) -> dict[str, float]:
    shares = percentiles(samples)
    return {share: round(shares[share], 3) for share in ("p50", "p90", "p99")}


# -- 1. through the server ------------------------------------------------------------------


def write_config(root: Path, upstream: str, team: str, *, redis_url: str, cache_enabled: bool) -> Path:
    (root / "policies").mkdir(parents=True, exist_ok=True)
    (root / "prompts").mkdir(parents=True, exist_ok=True)
    config = {
        "server": {"host": "127.0.0.1", "access_log": True, "log_level": "warning"},
        "storage": {"database_url": f"sqlite:///{root / 'gateway.db'}"},
        "redis": {"url": redis_url},
        "auth": {"admin_key": ADMIN_KEY},
        "cache": {"enabled": cache_enabled},
    }
    deployment = {"provider": "openai", "base_url": f"{upstream}/v1", "model": "gpt-4o-mini", "retries": 0}
    models = {"aliases": {"gpt-4o-mini": {"deployments": [deployment]}}}
    teams = {"teams": {team: {"cache": {"enabled": True}}}}
    (root / "gateway.yaml").write_text(yaml.safe_dump(config))
    (root / "policies" / "models.yaml").write_text(yaml.safe_dump(models))
    (root / "policies" / "teams.yaml").write_text(yaml.safe_dump(teams))
    return root / "gateway.yaml"


def start_gateway(workdir: Path, name: str, upstream: str, team: str, **options: Any) -> tuple[Server, str]:
    root = workdir / name
    config = write_config(root, upstream, team, **options)
    port = free_port()
    env = {**os.environ, "GATEWAY_CONFIG": str(config)}
    server = start_server(
        f"gateway ({name})",
        [sys.executable, "-m", "gateway", "serve", "--config", str(config), "--port", str(port), "--workers", "1"],
        base_url=f"http://127.0.0.1:{port}",
        ready_path="/health/ready",
        log_path=root / "gateway.log",
        core=None,
        env=env,
        cwd=root,
    )
    created = httpx.post(
        f"{server.base_url}/admin/keys", json={"team": team}, headers={"Authorization": f"Bearer {ADMIN_KEY}"}
    )
    created.raise_for_status()
    return server, created.json()["key"]


def through_server(workdir: Path, requests: int, redis_url: str | None) -> dict[str, Any]:
    team = "bench-" + secrets.token_hex(4)
    fake = start_fake(workdir, port=free_port(), core=None)
    servers = [fake]
    try:
        gateways = {}
        for name, options in [
            ("off", {"redis_url": "", "cache_enabled": False}),
            ("memory", {"redis_url": "", "cache_enabled": True}),
            *([("redis", {"redis_url": redis_url, "cache_enabled": True})] if redis_url else []),
        ]:
            server, key = start_gateway(workdir, name, fake.base_url, team, **options)
            servers.append(server)
            gateways[name] = (server.base_url, key)
        scenarios: list[tuple[str, str, str]] = [("off miss", "off", "miss")]
        for name in gateways:
            if name != "off":
                scenarios += [
                    (f"{name} miss", name, "miss"),
                    (f"{name} hit", name, "hit"),
                    (f"{name} hit stream", name, "stream"),
                ]
        samples: dict[str, list[float]] = {label: [] for label, _, _ in scenarios}
        unexpected: Counter[str] = Counter()
        with httpx.Client(timeout=30) as client:

            def ask(name: str, kind: str, n: int, *, check: bool = True) -> float:
                url, key = gateways[name]
                question = f"Question {n} {secrets.token_hex(4)}" if kind == "miss" else "What is France's capital?"
                body: dict[str, Any] = {
                    "model": "gpt-4o-mini",
                    "temperature": 0,
                    "messages": [*MESSAGES[:1], {"role": "user", "content": question}],
                }
                if kind == "stream":
                    body["stream"] = True
                response = client.post(
                    f"{url}/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"}
                )
                response.raise_for_status()
                expected = {"miss": ("MISS", "BYPASS"), "hit": ("HIT",), "stream": ("HIT",)}[kind]
                if check and response.headers.get("x-cache", "BYPASS") not in expected:
                    # e.g. Redis timing out on an overloaded machine: the cache failed open.
                    unexpected[f"{name} {kind}: {response.headers.get('x-cache')}"] += 1
                return float(response.headers["x-gateway-overhead-ms"])

            for n in range(min(200, requests // 5)):  # warm up: connections, imports, first entries
                for _, name, kind in scenarios:
                    ask(name, kind, -n - 1, check=False)
            for n in range(requests):
                for label, name, kind in scenarios:
                    samples[label].append(ask(name, kind, n))
            # CPU the gateway process spends per request, scenario by scenario: unlike wall
            # time, it hardly moves when other work shares the machine.
            processes = dict(zip(gateways, servers[1:], strict=True))
            cpu: dict[str, float] = {}
            for label, name, kind in scenarios:
                before = processes[name].cpu_seconds()
                for n in range(requests):
                    ask(name, kind, requests + n)
                cpu[label] = round((processes[name].cpu_seconds() - before) / requests * 1e6, 1)
        if redis_url:
            import redis

            client_r = redis.Redis.from_url(redis_url)
            for pattern in PurgeFilter(scopes=(team_scope(team),)).patterns():
                keys = list(client_r.scan_iter(match=pattern, count=1000))
                if keys:
                    client_r.unlink(*keys)
            client_r.close()
    finally:
        for server in reversed(servers):
            server.stop()
    results: dict[str, Any] = {label: percentiles_ms(values) for label, values in samples.items()}
    baseline = results["off miss"]["p50"]
    for name in gateways:
        if name != "off":
            results[f"{name}: added on a miss (p50)"] = round(results[f"{name} miss"]["p50"] - baseline, 3)
    results["gateway CPU per request (us)"] = cpu
    results["unexpected x-cache (failed open)"] = dict(unexpected)
    return results


# -- 2. the stage alone -----------------------------------------------------------------------


async def stage_alone(iterations: int, redis_url: str | None) -> dict[str, Any]:
    team = "bench-" + secrets.token_hex(4)
    catalog = stage_catalog(team, {"cache": {"enabled": True}})
    answer = orjson.dumps(
        {
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "created": 1,
            "model": "gpt-4o-mini",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "Paris, known for art and food."},
                    "logprobs": None,
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 30, "completion_tokens": 8, "total_tokens": 38},
        }
    )
    parsed = orjson.loads(answer)
    principal = Principal("key_bench", team, frozenset({"app"}))

    async def upstream(ctx: RequestContext) -> Reply:
        ctx.deployment = ctx.deployments[0]
        ctx.usage = Usage(30, 8)
        return JsonReply(200, answer, parsed)

    def context(question: str) -> RequestContext:
        ctx = RequestContext(
            request_id="bench", endpoint=Endpoint.CHAT, raw_body=b"", authorization=None, catalog=catalog
        )
        ctx.principal = principal
        ctx.body = {
            "model": "bench",
            "temperature": 0,
            "messages": [*MESSAGES[:1], {"role": "user", "content": question}],
        }
        ctx.alias = catalog.aliases["bench"]
        ctx.deployments = ctx.alias.deployments
        return ctx

    outcomes: Counter[str] = Counter()

    async def timed(
        make: Callable[[int], RequestContext], stage: Cache, call: Callable[..., Awaitable[Reply]]
    ) -> list[float]:
        samples = []
        for n in range(iterations):
            ctx = make(n)
            started = time.perf_counter()
            await stage(ctx, call)
            samples.append((time.perf_counter() - started) * 1e6)
            outcomes[f"{stage.store.name} {ctx.cache_status}"] += 1
            if n % 64 == 0:
                await asyncio.sleep(0)  # let background writes run, as between real requests
        return samples

    results: dict[str, Any] = {}
    stores: list[tuple[str, Any]] = [("memory", MemoryStore(64 * 1024 * 1024))]
    client = None
    if redis_url:
        from gateway.redis.wire import RedisWire

        client = RedisWire(redis_url, timeout_s=1.0)
        # A generous deadline: this measures cost, and a loaded machine must not trip the breaker.
        stores.append(
            (
                "redis",
                RedisStore(
                    redis_url,
                    CacheMetrics(Metrics(), "redis"),
                    admin=client,
                    op_timeout_s=1.0,
                    compress_min=4096,
                    max_pending=1000,
                    breaker_failures=3,
                    breaker_retry_s=1.0,
                ),
            )
        )
    upstream_only = []
    for n in range(iterations):
        ctx = context(f"q{n}")
        started = time.perf_counter()
        await upstream(ctx)
        upstream_only.append((time.perf_counter() - started) * 1e6)
    if redis_url:
        # The floor under the Redis numbers: one round trip on the same kind of connection.
        wire = RedisWire(redis_url, timeout_s=1.0)
        pings = []
        for _ in range(iterations):
            started = time.perf_counter()
            await wire.call("PING")
            pings.append((time.perf_counter() - started) * 1e6)
        await wire.close()
        results["redis round trip alone, PING (us)"] = _us(pings)
    for name, store in stores:
        stage = Cache(store, CacheMetrics(Metrics(), name), wait_s=10.0)
        await stage(context("warm"), upstream)
        misses = await timed(lambda n: context(f"miss {n} {secrets.token_hex(4)}"), stage, upstream)
        await asyncio.sleep(0.2)
        hits = await timed(lambda n: context("warm"), stage, upstream)
        results[f"{name} stage hit (us)"] = _us(hits)
        results[f"{name} stage miss, upstream included (us)"] = _us(misses)
        results[f"{name} stage: added on a miss, p50 (us)"] = round(
            statistics.median(misses) - statistics.median(upstream_only), 1
        )
        await store.purge(PurgeFilter(scopes=(team_scope(team),)))
        await store.close()
    if client is not None:
        await client.close()
    results["outcomes (misses then hits)"] = dict(outcomes)
    return results


def _us(samples: list[float]) -> dict[str, float]:
    shares = percentiles(samples)
    return {share: round(shares[share], 1) for share in ("p50", "p99")}


def run() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=1000, help="Requests per scenario through the server.")
    parser.add_argument("--iterations", type=int, default=5000, help="Stage-alone iterations per case.")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0", help="Empty to skip Redis.")
    parser.add_argument("--out", type=Path, help="Also write the results as JSON here.")
    args = parser.parse_args()
    redis_url = args.redis_url or None
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="cache-bench-") as workdir:
        results["through the server (gateway time, ms)"] = through_server(Path(workdir), args.requests, redis_url)
    try:
        import uvloop

        stage = uvloop.run(stage_alone(args.iterations, redis_url))
    except ImportError:
        stage = asyncio.run(stage_alone(args.iterations, redis_url))
    results["the stage alone (us)"] = stage
    text = orjson.dumps(results, option=orjson.OPT_INDENT_2).decode()
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    run()
