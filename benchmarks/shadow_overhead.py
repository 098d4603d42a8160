"""What shadow traffic costs the caller: ``python -m benchmarks.shadow_overhead``.

Three ``gateway serve`` processes against one fast fake upstream (the primary):

- ``off``: no shadow rule;
- ``hang``: every request copied (``sample_rate: 1``) to a target that never answers in time
  (a second fake upstream with a 10-minute latency): copies hold their slot until
  ``shadow.timeout_s`` and the rest are dropped, as with a provider that hangs;
- ``fast``: every request copied to a target that answers at once (every copy runs to its
  end, is compared and stored: the most work shadows put on the process per request).

Requests go one at a time (concurrency 1) over a kept-alive connection, in blocks alternating
between the gateways so that drift on the machine hits each alike. Reported per gateway: the
caller's end-to-end p50 and p99 (measured by the client), and the process's CPU per request.
The issue's bar: the caller's p50 with a hanging shadow within 0.2 ms of no shadow at all.

``--in-process`` measures instead what shadows add to every request's path in this process:
the routing strategy's ``plan`` with no rule, with a rule on another alias, and with a rule on
the request's alias at 5 % (against the bare weighted strategy), and the runner's sink for a
request without copies (``timeit``, best of 5).
"""

from __future__ import annotations

import argparse
import secrets
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import orjson

from benchmarks.blocks import alternating_blocks, one_alias, start_bench_gateway
from benchmarks.procs import Server, free_port
from benchmarks.servers import start_fake

ADMIN_KEY = "bench-admin-" + secrets.token_hex(8)
MESSAGES = [
    {"role": "system", "content": "You are a helpful assistant that answers briefly."},
    {"role": "user", "content": "What is the capital of France, and what is it known for?"},
]



def start_gateway(workdir: Path, name: str, upstream: str, shadow_upstream: str | None) -> tuple[Server, str]:
    aliases = one_alias(upstream)
    policies: dict[str, Any] = {}
    if shadow_upstream is not None:
        aliases["candidate"] = {"deployments": [{**aliases["gpt-4o-mini"]["deployments"][0],
                                                 "base_url": f"{shadow_upstream}/v1", "model": "gpt-4o",
                                                 "timeout_s": 600}]}
        rule = {"target": "candidate", "sample_rate": 1.0, "traffic": {"alias": "gpt-4o-mini"}}
        policies["shadows"] = {"shadows": {"bench": rule}}
    return start_bench_gateway(workdir, name, admin_key=ADMIN_KEY, aliases=aliases,
                               sections={"shadow": {"max_concurrent": 16, "timeout_s": 30}}, policies=policies)


def copies(server: Server) -> dict[str, float]:
    """``gateway_shadow_copies_total`` by outcome, from the gateway's /metrics."""
    from prometheus_client.parser import text_string_to_metric_families

    found: dict[str, float] = {}
    for family in text_string_to_metric_families(httpx.get(f"{server.base_url}/metrics").text):
        for sample in family.samples:
            if sample.name == "gateway_shadow_copies_total":
                outcome = sample.labels["outcome"]
                found[outcome] = found.get(outcome, 0.0) + sample.value
    return found


def measure(workdir: Path, requests: int, blocks: int) -> dict[str, Any]:
    primary = start_fake(workdir, port=free_port(), core=None, name="fake-primary")
    servers = [primary]
    try:
        hanging = start_fake(workdir, port=free_port(), core=None, name="fake-hanging", latency_ms=600_000)
        fast = start_fake(workdir, port=free_port(), core=None, name="fake-fast")
        servers += [hanging, fast]
        gateways: dict[str, tuple[Server, str]] = {}
        for name, shadow in (("off", None), ("hang", hanging.base_url), ("fast", fast.base_url)):
            gateways[name] = start_gateway(workdir, name, primary.base_url, shadow)
            servers.append(gateways[name][0])
        with httpx.Client(timeout=30) as client:

            def ask(name: str, n: int) -> float:
                server, key = gateways[name]
                body = orjson.dumps(
                    {"model": "gpt-4o-mini", "messages": [*MESSAGES, {"role": "user", "content": f"Question {n}"}]}
                )
                started = time.perf_counter()
                response = client.post(
                    f"{server.base_url}/v1/chat/completions",
                    content=body,
                    headers={"Authorization": f"Bearer {key}", "content-type": "application/json"},
                )
                elapsed = time.perf_counter() - started
                response.raise_for_status()
                return elapsed * 1000

            for n in range(300):  # warm up: connections, imports, tokenizers, the slots filling
                for name in gateways:
                    ask(name, n)
            time.sleep(1.0)
            measured = alternating_blocks(
                {name: server for name, (server, _) in gateways.items()}, ask, blocks=blocks, requests=requests
            )
        outcomes = {name: copies(gateways[name][0]) for name in ("hang", "fast")}
    finally:
        for server in reversed(servers):
            server.stop()
    result: dict[str, Any] = {"requests_per_block": requests, "blocks": blocks}
    for name, found in measured.answers.items():
        ordered = sorted(latency for block in found for latency in block)
        result[name] = {
            "caller_p50_ms": round(statistics.median(ordered), 3),
            "caller_p99_ms": round(ordered[int(len(ordered) * 0.99) - 1], 3),
            "block_p50_ms_median": round(statistics.median(statistics.median(block) for block in found), 3),
            "cpu_us_per_request": round(statistics.median(measured.cpu_us[name]), 1),
        }
    result["p50_hang_minus_off_ms"] = round(result["hang"]["caller_p50_ms"] - result["off"]["caller_p50_ms"], 3)
    result["p50_fast_minus_off_ms"] = round(result["fast"]["caller_p50_ms"] - result["off"]["caller_p50_ms"], 3)
    result["copies"] = outcomes
    return result


def in_process(number: int) -> dict[str, Any]:
    import timeit

    from prometheus_client import CollectorRegistry

    from gateway.auth import Principal
    from gateway.catalog import build_catalog
    from gateway.config.policies import ModelsFile, PolicyBundle, TeamsFile
    from gateway.config.settings import ShadowSettings
    from gateway.config.shadows import ShadowsFile
    from gateway.context import Endpoint, RequestContext
    from gateway.routing import RoutingPlan, ShadowStrategy, Weighted
    from gateway.shadow.runner import ShadowMetrics, ShadowRunner

    models = {
        "aliases": {
            name: {"deployments": [{"provider": "mock", "model": f"{name}-{i}"} for i in range(2)]}
            for name in ("chat", "other", "candidate")
        }
    }

    def catalog(on: str | None) -> Any:
        rules = {} if on is None else {"r": {"target": "candidate", "sample_rate": 0.05, "traffic": {"alias": on}}}
        return build_catalog(
            PolicyBundle(
                models=ModelsFile.model_validate(models),
                teams=TeamsFile.model_validate({"teams": {"t": {}}}),
                shadows=ShadowsFile.model_validate({"shadows": rules}),
            )
        )

    def request(cat: Any) -> RequestContext:
        ctx = RequestContext(request_id="r", endpoint=Endpoint.CHAT, raw_body=b"{}", authorization=None, catalog=cat)
        ctx.principal = Principal("key_1", "t", frozenset())
        return ctx

    cases: dict[str, Any] = {}
    for label, on in (("no_rules", None), ("rule_on_another_alias", "other"), ("rule_on_this_alias_5pct", "chat")):
        cat = catalog(on)
        ctx, alias = request(cat), cat.aliases["chat"]
        shadow = ShadowStrategy(Weighted())
        cases[f"plan_us_{label}"] = lambda s=shadow, c=ctx, a=alias: s.plan(c, a)
    cat = catalog(None)
    ctx, alias = request(cat), cat.aliases["chat"]
    weighted = Weighted()
    cases["plan_us_weighted_alone"] = lambda: weighted.plan(ctx, alias)
    runner = ShadowRunner(lambda: None, ShadowSettings(), ShadowMetrics(CollectorRegistry()), None)
    finished = request(cat)
    finished.plan = RoutingPlan(alias.deployments)
    cases["runner_sink_us_no_copies"] = lambda: runner.record(finished)
    # Rounds alternate between the cases so that the machine's load hits each alike; the
    # best round of each is kept (the least disturbed).
    best: dict[str, float] = {}
    for _ in range(9):
        for name, case in cases.items():
            seconds = timeit.timeit(case, number=number)
            best[name] = min(best.get(name, seconds), seconds)
    results: dict[str, Any] = {"calls": number}
    results.update({name: round(seconds / number * 1e6, 3) for name, seconds in best.items()})
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--requests", type=int, default=500, help="Requests per block.")
    parser.add_argument("--blocks", type=int, default=6, help="Blocks per gateway (alternating).")
    parser.add_argument("--in-process", action="store_true", help="Per-request CPU of routing and the sink.")
    args = parser.parse_args()
    if args.in_process:
        print(orjson.dumps(in_process(200_000), option=orjson.OPT_INDENT_2).decode())
        return
    with tempfile.TemporaryDirectory(prefix="shadow-bench-") as workdir:
        result = measure(Path(workdir), args.requests, args.blocks)
    print(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())


if __name__ == "__main__":
    main()
