"""What tracing every request to Langfuse costs: ``python -m benchmarks.tracing_overhead``.

Two ``gateway serve`` processes against one fake upstream: tracing off, and tracing at 100 %
sampling to a local Langfuse receiver (``gateway.testing.langfuse_receiver``, in this process,
so its work is not charged to the gateway). Requests go one at a time over a kept-alive
connection.

- **CPU per request**: the gateway process's CPU time (from /proc, children included) over
  blocks of requests, alternating between the two gateways so that drift on the machine hits
  both alike. The traced gateway's figure includes everything tracing does in that process:
  the trace id, the queue, and the background task that builds, encodes, compresses and sends
  the spans. "added" is the difference of the medians over the blocks.
- **Overhead p50**: the ``x-gateway-overhead-ms`` header (the gateway's time until the answer
  went out, upstream excluded), to show that export happens off the request path.
- **Latency p50**: what the client measured, request to answer (the issue's bar for an outage:
  tracing on within 0.2 ms of tracing off).

At the end it checks that the receiver got one span per traced request.

``--receiver error|hang|stopped`` measures the same with Langfuse failing for the measured
blocks (the warm-up runs against a working one): answering 500, accepting connections and never
answering, or refusing them. Every request must still succeed; the spans are lost and counted
(``gateway_trace_spans_dropped_total``, read off the traced gateway's ``/metrics`` at the end).

``--in-process`` measures instead, in this process, the CPU (``time.thread_time``) of one
request's tracing as the gateway does it (the start hook, the sink, building and encoding the
span, its share of the envelope and of gzip) next to what the official Langfuse SDK spends on
the calling thread for one generation with the same fields (before its own export thread does
anything): the measurement behind the choice of writing OTLP directly.
"""

from __future__ import annotations

import argparse
import gc
import secrets
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import orjson

from benchmarks.blocks import alternating_blocks, one_alias, start_bench_gateway
from benchmarks.procs import Server, free_port, http_get_text
from benchmarks.report import spans_dropped
from benchmarks.servers import start_fake
from gateway.testing.langfuse_receiver import LangfuseReceiver, Mode

ADMIN_KEY = "bench-admin-" + secrets.token_hex(8)
MESSAGES = [
    {"role": "system", "content": "You are a helpful assistant that answers briefly."},
    {"role": "user", "content": "What is the capital of France, and what is it known for?"},
]



def _dropped(base_url: str) -> float:
    """Spans the gateway counted as dropped, any reason, any destination (its ``/metrics``)."""
    return spans_dropped(http_get_text(f"{base_url}/metrics"))


def measure(
    workdir: Path, requests: int, blocks: int, compression: str, receiver_mode: Mode = "normal"
) -> dict[str, Any]:
    fake = start_fake(workdir, port=free_port(), core=None)
    servers = [fake]
    with LangfuseReceiver() as receiver:
        try:
            tracing = {"host": receiver.url, "public_key": receiver.public_key, "secret_key": receiver.secret_key,
                       "sample_rate": 1.0, "compression": compression}
            gateways: dict[str, tuple[Server, str]] = {}
            for name, sections in (("off", {}), ("on", {"tracing": tracing})):
                gateways[name] = start_bench_gateway(workdir, name, admin_key=ADMIN_KEY,
                                                     aliases=one_alias(fake.base_url), sections=sections)
                servers.append(gateways[name][0])
            with httpx.Client(timeout=30) as client:

                def ask(name: str, n: int) -> tuple[float, float]:
                    """(the gateway's overhead header, the latency the client saw), in ms."""
                    server, key = gateways[name]
                    body = {"model": "gpt-4o-mini", "user": f"user-{n % 7}",
                            "messages": [*MESSAGES, {"role": "user", "content": f"Question {n}"}]}
                    started = time.perf_counter()
                    response = client.post(f"{server.base_url}/v1/chat/completions", content=orjson.dumps(body),
                                           headers={"Authorization": f"Bearer {key}",
                                                    "content-type": "application/json"})
                    latency_ms = (time.perf_counter() - started) * 1000
                    response.raise_for_status()
                    return float(response.headers["x-gateway-overhead-ms"]), latency_ms

                for n in range(300):  # warm up: connections, imports, the exporter's session
                    for name in gateways:
                        ask(name, n)
                time.sleep(1.0)
                receiver.set_mode(receiver_mode)
                dropped_before = _dropped(gateways["on"][0].base_url)
                measured = alternating_blocks(
                    {name: server for name, (server, _) in gateways.items()}, ask, blocks=blocks, requests=requests,
                    # let the exporter's last batch go out inside the block
                    after_block=lambda _name: time.sleep(0.6),
                )
            sent = 300 + blocks * requests
            expected = sent if receiver_mode == "normal" else 300  # the warm-up's
            deadline = time.monotonic() + 10
            while len(receiver.spans()) < expected and time.monotonic() < deadline:
                time.sleep(0.1)
            received = len(receiver.spans())
            dropped = _dropped(gateways["on"][0].base_url) - dropped_before
        finally:
            for server in reversed(servers):
                server.stop()
    cpu_off, cpu_on = statistics.median(measured.cpu_us["off"]), statistics.median(measured.cpu_us["on"])

    def p50(name: str, which: int) -> float:
        return round(statistics.median([answer[which] for block in measured.answers[name] for answer in block]), 3)

    latency = {name: p50(name, 1) for name in measured.answers}
    return {
        "receiver": receiver_mode,
        "requests_per_block": requests,
        "blocks": blocks,
        "compression": compression,
        "cpu_us_per_request": {"off": round(cpu_off, 1), "on": round(cpu_on, 1)},
        "cpu_us_added_by_tracing": round(cpu_on - cpu_off, 1),
        "overhead_p50_ms": {name: p50(name, 0) for name in measured.answers},
        "latency_p50_ms": latency,
        "latency_p50_on_minus_off_ms": round(latency["on"] - latency["off"], 3),
        "spans_received": received,
        "traced_requests": sent,
        "spans_dropped_while_measured": dropped,
    }


def _finished_request(n: int, catalog: Any) -> Any:
    from gateway.answer import Answer
    from gateway.auth import Principal
    from gateway.context import Endpoint, RequestContext, Usage

    alias = catalog.aliases["bench"]
    ctx = RequestContext(request_id=secrets.token_hex(16), endpoint=Endpoint.CHAT, raw_body=b"",
                         authorization=None, catalog=catalog)
    ctx.principal = Principal(key_id="key_0123456789ab", team="bench", roles=frozenset({"app"}))
    ctx.body = {"model": "bench", "messages": [*MESSAGES, {"role": "user", "content": f"Question {n}"}]}
    ctx.requested_model, ctx.alias = "bench", alias
    ctx.deployment, ctx.deployments = alias.deployments[0], alias.deployments
    ctx.user, ctx.usage, ctx.cost, ctx.elapsed_seconds, ctx.attempts = f"user-{n % 7}", Usage(31, 24), 1.8e-5, 0.004, 1
    answer = {"id": "c", "object": "chat.completion", "choices": [{"index": 0, "finish_reason": "stop",
              "message": {"role": "assistant", "content": "Paris, known for its museums and cafés. " * 3}}]}
    ctx.answer = Answer.of_json(200, orjson.dumps(answer), None)
    return ctx


def in_process(requests: int, content: str = "full") -> dict[str, Any]:
    import asyncio

    from prometheus_client import CollectorRegistry, Counter

    from benchmarks.servers import stage_catalog
    from gateway.config.settings import TracingSettings
    from gateway.tracing.exporter import exporter_for

    # One catalog for every request, as in the server, and the prepared requests frozen out of
    # the collector's sight, as the server freezes its start-up heap (``gateway.heap``): what is
    # measured is tracing's work, not collections walking thousands of requests made in advance.
    # (A catalog per request, until December 2026, kept 3,000 catalogs alive, and the figure
    # read 50 or 115-165 µs by where the collector's counts happened to stand.)
    catalog = stage_catalog("bench", {})
    contexts = [_finished_request(n, catalog) for n in range(requests)]
    gc.collect()
    gc.freeze()
    with LangfuseReceiver() as receiver:
        settings = TracingSettings.model_validate({
            "host": receiver.url, "public_key": receiver.public_key, "secret_key": receiver.secret_key,
            "queue_size": requests, "content": content,
        })

        async def ours() -> float:
            registry = CollectorRegistry()
            exporter = exporter_for(
                settings, dropped=Counter("d", "d", ("reason", "destination"), registry=registry),
                exported=Counter("e", "e", ("destination",), registry=registry),
            )
            started = time.thread_time()
            for ctx in contexts:
                exporter.start(ctx)
                exporter.record(ctx)
            while exporter.queued:
                await exporter.export_batch()
            spent = time.thread_time() - started
            await exporter.close()
            return spent

        gateway_s = asyncio.run(ours())
        assert len(receiver.spans()) == requests

        from langfuse import Langfuse

        client = Langfuse(public_key=receiver.public_key, secret_key=receiver.secret_key, host=receiver.url)
        started = time.thread_time()
        for ctx in contexts:
            generation = client.start_observation(
                name="chat bench", as_type="generation", model="gpt-4o-mini", input=ctx.body["messages"],
                metadata={"team": "bench", "key_id": "key_0123456789ab", "alias": "bench",
                          "deployment": "openai/gpt-4o-mini", "request_id": ctx.request_id, "status": 200},
                usage_details={"input": 31, "output": 24}, cost_details={"total": ctx.cost},
            )
            generation.update(output={"role": "assistant", "content": ctx.answer.text})
            generation.end()
        sdk_s = time.thread_time() - started
        client.flush()
        client.shutdown()
    return {
        "requests": requests,
        "content_policy": content,
        "gateway_tracing_cpu_us_per_request": round(gateway_s / requests * 1e6, 1),
        "langfuse_sdk_calling_thread_cpu_us_per_generation": round(sdk_s / requests * 1e6, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    # 2,000: the kernel counts CPU time in 10 ms ticks, so a block of 500 requests at ~400 µs
    # each read to ±20 µs a request, and the two gateways' medians often tied at the same tick.
    parser.add_argument("--requests", type=int, default=2000, help="Requests per block.")
    parser.add_argument("--blocks", type=int, default=8, help="Blocks per gateway (alternating).")
    parser.add_argument("--compression", choices=["gzip", "none"], default="gzip")
    parser.add_argument("--receiver", choices=["normal", "error", "hang", "stopped"], default="normal",
                        help="Langfuse during the measured blocks: working, answering 500, never answering, down.")
    parser.add_argument("--in-process", action="store_true", help="Per-request CPU in process, vs the Langfuse SDK.")
    parser.add_argument("--content", choices=["full", "mask", "hash", "none"], default="full",
                        help="The redaction policy (--in-process): mask and hash run every masker.")
    args = parser.parse_args()
    if args.in_process:
        print(orjson.dumps(in_process(args.requests, args.content), option=orjson.OPT_INDENT_2).decode())
        return
    with tempfile.TemporaryDirectory(prefix="tracing-bench-") as workdir:
        result = measure(Path(workdir), args.requests, args.blocks, args.compression, args.receiver)
    print(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())


if __name__ == "__main__":
    main()
