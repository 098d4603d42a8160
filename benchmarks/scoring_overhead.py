"""What scoring live answers costs: ``python -m benchmarks.scoring_overhead``.

Two ``gateway serve`` processes against one fake upstream, both sent the same requests with a
``scoring_context`` of six help-centre passages (about 1 KB): scoring off, and scoring at
100 % sampling with the default evaluator (``groundedness``), its scores written to the store.
Requests go one at a time over a kept-alive connection, alternating blocks between the two
gateways so that drift on the machine hits both alike.

- **latency p50**: client-side, per request, at concurrency 1 (the issue's figure: scoring on
  must stay within 0.2 ms of off), and the ``x-gateway-overhead-ms`` header's p50;
- **CPU per scored answer**: the gateway process tree's CPU (the scoring worker process
  included, from /proc) per request, on - off.

``--in-process`` measures instead, in this process, what one answer costs on each side: the
event loop's share (the sink's decision and queueing, turning the request into text, handing
the batch to the worker and taking the outcome back, ``time.thread_time``), and the worker's
(the evaluator's ``score``, ``time.process_time``).
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
PASSAGES = [
    {
        "title": "Refunds",
        "text": "Refunds are available within 30 days of purchase for annual plans. Monthly plans "
        "are not refundable, but you can cancel at any time and keep access until the end of the period.",
    },
    {
        "title": "Shipping",
        "text": "Hardware orders ship within 2 business days. Shipping is free for orders over "
        "$50 in the EU and the US; other orders pay a flat $7.50.",
    },
    {
        "title": "Plans",
        "text": "The Team plan costs $20 per user per month and includes 50 projects. The Enterprise "
        "plan adds SAML single sign-on, audit logs and a 99.9% uptime SLA.",
    },
    {
        "title": "Support",
        "text": "Support answers by e-mail Monday to Friday, 9am to 5pm CET. Enterprise customers "
        "also get a phone line and a named account manager.",
    },
    {
        "title": "Data",
        "text": "Customer data is stored in Frankfurt. Backups are kept for 35 days and encrypted "
        "with AES-256. Deleting an account removes its data within 30 days.",
    },
    {
        "title": "Trials",
        "text": "Every paid plan starts with a 14-day free trial; no credit card is required. At the "
        "end of the trial the workspace becomes read-only until a plan is chosen.",
    },
]
ANSWER = (
    "Annual plans can be refunded within 30 days of purchase, while monthly plans are not refundable. "
    "Hardware ships within 2 business days and shipping is free over $50 in the EU. "
    "The Team plan costs $25 per user per month and includes unlimited projects. "
    "Hope this helps!"
)



def scored_count(server: Server) -> float:
    text = httpx.get(f"{server.base_url}/metrics").text
    for line in text.splitlines():
        if line.startswith("gateway_scoring_scores_written_total "):
            return float(line.split()[1])
    return 0.0


def measure(workdir: Path, requests: int, blocks: int) -> dict[str, Any]:
    fake = start_fake(workdir, port=free_port(), core=None)
    servers = [fake]
    try:
        gateways: dict[str, tuple[Server, str]] = {}
        for name, scoring in (("off", False), ("on", True)):
            gateways[name] = start_bench_gateway(
                workdir, name, admin_key=ADMIN_KEY, aliases=one_alias(fake.base_url),
                sections={"scoring": {"enabled": scoring}},
                policies={"scoring": {"sample_rate": 1.0 if scoring else 0.0}},
            )
            servers.append(gateways[name][0])
        sent = {name: 0 for name in gateways}
        with httpx.Client(timeout=30) as client:

            def ask(name: str, n: int) -> tuple[float, float]:
                """(latency ms, the gateway's x-gateway-overhead-ms)"""
                server, key = gateways[name]
                body = {
                    "model": "gpt-4o-mini",
                    "scoring_context": PASSAGES,
                    "messages": [
                        {"role": "system", "content": "Answer from the passages."},
                        {"role": "user", "content": f"{ANSWER} (ticket {n})"},
                    ],
                }
                started = time.perf_counter()
                response = client.post(
                    f"{server.base_url}/v1/chat/completions",
                    content=orjson.dumps(body),
                    headers={"Authorization": f"Bearer {key}", "content-type": "application/json"},
                )
                latency = (time.perf_counter() - started) * 1000
                response.raise_for_status()
                sent[name] += 1
                return latency, float(response.headers["x-gateway-overhead-ms"])

            for n in range(300):  # warm up: connections, imports, the scoring worker process
                for name in gateways:
                    ask(name, n)
            deadline = time.monotonic() + 60
            while scored_count(gateways["on"][0]) < sent["on"] and time.monotonic() < deadline:
                time.sleep(0.1)

            def all_scored(name: str) -> None:
                """The block's answers are all scored and written inside the block."""
                server = gateways[name][0]
                deadline = time.monotonic() + 60
                while name == "on" and scored_count(server) < sent[name] and time.monotonic() < deadline:
                    time.sleep(0.05)
                time.sleep(0.3)

            measured = alternating_blocks(
                {name: server for name, (server, _) in gateways.items()}, ask, blocks=blocks, requests=requests,
                after_block=all_scored,
            )
        scored = scored_count(gateways["on"][0])
    finally:
        for server in reversed(servers):
            server.stop()
    cpu_off, cpu_on = statistics.median(measured.cpu_us["off"]), statistics.median(measured.cpu_us["on"])
    answers = {name: [answer for block in found for answer in block] for name, found in measured.answers.items()}
    return {
        "requests_per_block": requests,
        "blocks": blocks,
        "latency_p50_ms": {name: round(statistics.median(a[0] for a in found), 3) for name, found in answers.items()},
        "overhead_p50_ms": {name: round(statistics.median(a[1] for a in found), 3) for name, found in answers.items()},
        "cpu_us_per_request": {"off": round(cpu_off, 1), "on": round(cpu_on, 1)},
        "cpu_us_per_scored_answer": round(cpu_on - cpu_off, 1),
        "answers_scored": scored,
        "answers_sent": sent["on"],
    }


def in_process(requests: int) -> dict[str, Any]:
    import asyncio

    from prometheus_client import CollectorRegistry, Counter, Histogram

    from benchmarks.servers import stage_catalog
    from gateway.answer import Answer
    from gateway.auth import Principal
    from gateway.context import Endpoint, RequestContext
    from gateway.scoring.groundedness import GroundednessEvaluator
    from gateway.scoring.live import LiveMetrics, LiveScorer
    from gateway.scoring.runners import Outcome, ProcessRunner

    catalog = stage_catalog("bench", {})
    alias = catalog.aliases["bench"]

    def finished(n: int) -> RequestContext:
        ctx = RequestContext(
            request_id=secrets.token_hex(16), endpoint=Endpoint.CHAT, raw_body=b"", authorization=None, catalog=catalog
        )
        ctx.principal = Principal(key_id="key_0123456789ab", team="bench", roles=frozenset({"app"}))
        ctx.alias, ctx.rollout_id, ctx.variant = alias, "bench", "canary"  # always sampled
        ctx.body = {"messages": [{"role": "user", "content": f"How do refunds work? ({n})"}]}
        ctx.scoring_context = PASSAGES
        data = {"choices": [{"index": 0, "message": {"role": "assistant", "content": ANSWER}}]}
        ctx.answer = Answer.of_json(200, orjson.dumps(data), data)
        return ctx

    contexts = [finished(n) for n in range(requests)]
    evaluator = GroundednessEvaluator()
    from gateway.scoring.context import passages_text

    context = passages_text(PASSAGES) or ""
    started = time.process_time()
    for n in range(requests):
        evaluator.score(context, f"How do refunds work? ({n})", ANSWER)
    evaluator_us = (time.process_time() - started) / requests * 1e6

    class Instant:
        """The worker's side costs nothing here: only the loop's side is measured."""

        name = "groundedness"

        async def run(self, cases: Any, budget_s: float) -> list[Outcome]:
            return [Outcome(0.3, 0.2, 3, 1, ("claim: reason",))] * len(cases)

        def close(self) -> None:
            return None

    async def loop_side(runner: Any) -> float:
        registry = CollectorRegistry()
        metrics = LiveMetrics(
            Histogram("h", "", ("prompt", "version", "variant"), registry=registry),
            Counter("s", "", ("reason",), registry=registry),
            Counter("d", "", ("reason",), registry=registry),
        )
        scorer = LiveScorer(runner, metrics, queue_size=requests, batch_size=32, timeout_s=2.0)
        begun = time.thread_time()
        for ctx in contexts:
            scorer.record(ctx)
        while scorer.queued:
            await scorer.score_batch()
        return (time.thread_time() - begun) / requests * 1e6

    loop_us = asyncio.run(loop_side(Instant()))

    async def with_process() -> float:
        runner = ProcessRunner("groundedness")
        await runner.run([("warm up", "", "up")], 5.0)
        try:
            return await loop_side(runner)
        finally:
            runner.close()

    handoff_us = asyncio.run(with_process())
    return {
        "answers": requests,
        "context_chars": len(context),
        "answer_chars": len(ANSWER),
        "evaluator_cpu_us_per_answer": round(evaluator_us, 1),
        "event_loop_cpu_us_per_answer_without_the_worker": round(loop_us, 1),
        "event_loop_cpu_us_per_answer_with_the_worker_process": round(handoff_us, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--requests", type=int, default=500, help="Requests per block.")
    parser.add_argument("--blocks", type=int, default=8, help="Blocks per gateway (alternating).")
    parser.add_argument("--in-process", action="store_true", help="Per-answer CPU in process, each side apart.")
    args = parser.parse_args()
    if args.in_process:
        print(orjson.dumps(in_process(args.requests), option=orjson.OPT_INDENT_2).decode())
        return
    with tempfile.TemporaryDirectory(prefix="scoring-bench-") as workdir:
        result = measure(Path(workdir), args.requests, args.blocks)
    print(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())


if __name__ == "__main__":
    main()
