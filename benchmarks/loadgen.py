"""A closed-loop HTTP load generator in its own process: ``python -m benchmarks.loadgen``.

It is the fallback when ``wrk`` is not installed, and the client that measures time to first
byte of a stream (wrk only sees whole responses). Each of ``--concurrency`` workers sends the
same POST body again and again (a ``__N__`` in it numbered per request) over one pooled aiohttp
session (uvloop), until ``--requests``
responses arrived or ``--duration`` passed, whichever comes first. Every response is checked:
a non-200 status, or a stream that does not end with ``data: [DONE]``, counts as an error.

It prints one JSON object on stdout, latencies in microseconds::

    {"requests": 2000, "errors": 0, "duration_us": ..., "bytes": ...,
     "latency_us": {"p50": ..., "p90": ..., "p99": ..., "max": ..., "mean": ...},
     "ttfb_us": {...}}

A Python client spends a few hundred microseconds per request of its own; that cost is the
same for every server measured with it, so differences between servers are still fair, but
its absolute throughput at high concurrency is lower than wrk's.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson

STREAM_END = b"data: [DONE]\n\n"
#: In a body, replaced by a number unique to each request of the run (so a cache never hits).
UNIQUE = b"__N__"


def _bodies(body: bytes) -> Any:
    """The body to send for each request: ``body`` itself, or with ``UNIQUE`` numbered."""
    if UNIQUE not in body:
        while True:
            yield body
    before, after = body.split(UNIQUE, 1)
    run = str(time.time_ns()).encode()
    count = 0
    while True:
        count += 1
        yield before + run + b"-" + str(count).encode() + after


def percentiles(samples: Sequence[float]) -> dict[str, float]:
    """Nearest-rank p50/p90/p99, max and mean of ``samples`` (zeros when there are none)."""
    if not samples:
        return {"p50": 0.0, "p90": 0.0, "p99": 0.0, "max": 0.0, "mean": 0.0}
    ordered = sorted(samples)
    last = len(ordered) - 1

    def rank(p: float) -> float:
        return ordered[min(last, max(0, round(p / 100 * len(ordered) + 0.5) - 1))]

    return {
        "p50": rank(50),
        "p90": rank(90),
        "p99": rank(99),
        "max": ordered[-1],
        "mean": sum(ordered) / len(ordered),
    }


def median_p99_row(name: str, figures: Sequence[float]) -> str:
    """A markdown table row: ``name``, then the p50 and p99 of ``figures``, to two decimals."""
    shares = percentiles(figures)
    return f"| {name} | {shares['p50']:.2f} | {shares['p99']:.2f} |"


@dataclass
class _Tally:
    """Shared by the workers; one event loop thread, so no locking."""

    remaining: int | None  # requests still to start; None = no cap
    deadline: float
    latencies: list[float] = field(default_factory=list)
    ttfbs: list[float] = field(default_factory=list)
    errors: int = 0
    bytes: int = 0
    error_samples: list[str] = field(default_factory=list)

    def take(self) -> bool:
        """May a worker start one more request?"""
        if time.perf_counter() >= self.deadline:
            return False
        if self.remaining is None:
            return True
        if self.remaining <= 0:
            return False
        self.remaining -= 1
        return True

    def fail(self, reason: str) -> None:
        self.errors += 1
        if len(self.error_samples) < 5:
            self.error_samples.append(reason)


async def _worker(
    session: aiohttp.ClientSession, url: str, bodies: Any, headers: dict[str, str], stream: bool, tally: _Tally
) -> None:
    while tally.take():
        body = next(bodies)
        started = time.perf_counter()
        try:
            async with session.post(url, data=body, headers=headers) as response:
                first = await response.content.readany()
                first_at = time.perf_counter()
                rest = await response.read()
                ended = time.perf_counter()
                status = response.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            tally.fail(f"{type(exc).__name__}: {exc}")
            continue
        payload = first + rest
        tally.bytes += len(payload)
        if status != 200:
            tally.fail(f"HTTP {status}: {payload[:200]!r}")
        elif stream and not payload.endswith(STREAM_END):
            tally.fail(f"stream did not end with [DONE]: {payload[-200:]!r}")
        else:
            tally.latencies.append((ended - started) * 1e6)
            tally.ttfbs.append((first_at - started) * 1e6)


async def run_load(
    url: str,
    body: bytes,
    *,
    concurrency: int,
    requests: int = 0,
    duration_s: float = 10.0,
    authorization: str | None = None,
    stream: bool = False,
) -> dict[str, Any]:
    """Drive the load; returns the summary printed by the command line."""
    headers = {"Content-Type": "application/json"}
    if authorization:
        headers["Authorization"] = authorization
    connector = aiohttp.TCPConnector(limit=concurrency, force_close=False, keepalive_timeout=60)
    timeout = aiohttp.ClientTimeout(total=60)
    started = time.perf_counter()
    tally = _Tally(remaining=requests if requests > 0 else None, deadline=started + duration_s)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout, skip_auto_headers=("User-Agent",)) as s:
        bodies = _bodies(body)  # one numbering shared by the workers
        await asyncio.gather(*(_worker(s, url, bodies, headers, stream, tally) for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    return {
        "requests": len(tally.latencies),
        "errors": tally.errors,
        "error_samples": tally.error_samples,
        "duration_us": int(elapsed * 1e6),
        "bytes": tally.bytes,
        "latency_us": percentiles(tally.latencies),
        "ttfb_us": percentiles(tally.ttfbs),
    }


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.loadgen", description=__doc__.split("\n\n")[0])
    parser.add_argument("url")
    parser.add_argument("--body", required=True, help="file with the JSON body to POST")
    parser.add_argument("--authorization", default=None, help="Authorization header value")
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--requests", type=int, default=0, help="stop after this many responses (0: no cap)")
    parser.add_argument("--duration", type=float, default=10.0, help="stop after this many seconds")
    parser.add_argument("--stream", action="store_true", help="responses are SSE streams ending with [DONE]")
    args = parser.parse_args(argv)
    with open(args.body, "rb") as file:
        body = file.read()
    try:
        import uvloop

        runner: Any = uvloop.run
    except ImportError:  # pragma: no cover - uvloop is a gateway dependency on Linux
        runner = asyncio.run
    summary = runner(
        run_load(
            args.url,
            body,
            concurrency=args.concurrency,
            requests=args.requests,
            duration_s=args.duration,
            authorization=args.authorization,
            stream=args.stream,
        )
    )
    sys.stdout.write(orjson.dumps(summary).decode() + "\n")


if __name__ == "__main__":
    main()
