"""What each feature of the full profile costs: ``python -m benchmarks.full_ablation``.

The full profile's gateway (``benchmarks.servers``, ``--profile full``) is run once as it is and
once with each feature left out (tracing, the response cache, the budget, the rollout), then
with all four left out, in alternating rounds, so that a machine drifting between minutes
(seen here: 0.3 ms at concurrency 1) shifts every variant alike. Each run warms up, then
sends requests (non-streaming, or streams with ``--stream``) for ``--seconds`` at
``--concurrency`` with wrk, and reads:

* the gateway process' CPU per request (``/proc``: user + system, all threads);
* the client's p50 and p99 latency.

A feature's cost is the full gateway's figure minus the figure without it. The loads run on
the second core, the gateway on the first (as in ``benchmarks.run``). Needs Redis (``--redis``)
and wrk.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.load import LoadSpec, measure, run_load
from benchmarks.procs import free_port
from benchmarks.servers import FULL_FEATURES, FullProfile, start_fake, start_gateway, write_bodies, wrk_path

SERVER_CORE = 0
LOAD_CORE = 1


@dataclass
class Variant:
    name: str
    without: frozenset[str]
    cpu_us: list[float] = field(default_factory=list)
    p50_ms: list[float] = field(default_factory=list)
    p99_ms: list[float] = field(default_factory=list)


def variants() -> list[Variant]:
    found = [Variant("full", frozenset())]
    found += [Variant(f"without {feature}", frozenset({feature})) for feature in FULL_FEATURES]
    found.append(Variant("without all four", frozenset(FULL_FEATURES)))
    return found


def run_once(variant: Variant, workdir: Path, upstream: str, body: Path, args: argparse.Namespace) -> None:
    from gateway.testing.langfuse_receiver import LangfuseReceiver

    with LangfuseReceiver(keep=False, cpus={LOAD_CORE}) as receiver:  # off the gateway's core, as Langfuse is
        full = FullProfile(
            redis_url=args.redis, langfuse_url=receiver.url, langfuse_public_key=receiver.public_key,
            langfuse_secret_key=receiver.secret_key, team="bench-" + uuid.uuid4().hex[:8], without=variant.without,
        )
        server, endpoint = start_gateway(workdir, upstream, port=free_port(), core=SERVER_CORE, full=full)
        try:
            run_load(LoadSpec(endpoint, body, args.concurrency, args.stream, args.warmup, "wrk", core=LOAD_CORE))
            result = measure(
                LoadSpec(endpoint, body, args.concurrency, args.stream, args.seconds, "wrk", core=LOAD_CORE), [server]
            )
        finally:
            server.stop()
    if result.errors or not result.requests:
        raise RuntimeError(f"{variant.name}: {result.errors} errors in {result.requests} requests")
    variant.cpu_us.append(result.cpu_s[server.name] / result.requests * 1e6)
    variant.p50_ms.append(result.latency_us["p50"] / 1000)
    variant.p99_ms.append(result.latency_us["p99"] / 1000)


def report(found: list[Variant], args: argparse.Namespace) -> str:
    full = statistics.median(found[0].cpu_us)
    lines = [
        f"{'Streams' if args.stream else 'Non-streaming'}, concurrency {args.concurrency}, {args.seconds:g} s per "
        f"run, {args.rounds} rounds (medians; each round's figures in brackets).",
        "",
        "| variant | CPU µs/req | vs full | p50 ms | p99 ms |",
        "|---|--:|--:|--:|--:|",
    ]
    for variant in found:
        cpu = statistics.median(variant.cpu_us)
        rounds = ", ".join(f"{value:.0f}" for value in variant.cpu_us)
        lines.append(
            f"| {variant.name} | {cpu:,.0f} [{rounds}] | {cpu - full:+,.0f} | "
            f"{statistics.median(variant.p50_ms):.3f} | {statistics.median(variant.p99_ms):.3f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=10.0, help="measured seconds per run")
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/15")
    parser.add_argument("--stream", action="store_true", help="streamed requests instead of JSON answers")
    args = parser.parse_args(argv)
    if wrk_path() is None:
        print("wrk is needed (apt-get install wrk)", file=sys.stderr)
        return 2
    found = variants()
    with tempfile.TemporaryDirectory(prefix="gw-ablation-") as temporary:
        workdir = Path(temporary)
        plain, stream = write_bodies(workdir, unique=True)
        fake = start_fake(workdir, port=free_port(), core=LOAD_CORE)
        try:
            for round_number in range(args.rounds):
                for variant in found:
                    where = workdir / f"r{round_number}-{variant.name.replace(' ', '-')}"
                    run_once(variant, where, fake.base_url, stream if args.stream else plain, args)
                    print(f"round {round_number + 1}: {variant.name}: {variant.cpu_us[-1]:.0f} µs CPU/req, "
                          f"p50 {variant.p50_ms[-1]:.3f} ms", file=sys.stderr, flush=True)
        finally:
            fake.stop()
    print(report(found, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
