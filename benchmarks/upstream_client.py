"""What a call to the upstream costs the gateway: ``python -m benchmarks.upstream_client``.

The OpenAI-compatible provider's client (``gateway.providers.http1``) against aiohttp's
``ClientSession`` configured as the provider had it (one pooled connector, a per-request
timeout), in one process, against the project's fake upstream pinned to the other core. Each
run sends ``--requests`` chat completions, ``--concurrency`` at a time, JSON answers read
whole, streams read piece by piece, and reads the process's CPU time (user + system) over
them. The clients alternate run by run, so a machine drifting between minutes shifts both
alike; the report gives each run's figure and the medians.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import orjson
import uvloop

from benchmarks.procs import free_port
from benchmarks.servers import REQUEST, UPSTREAM_KEY, start_fake
from gateway.providers import http1

CLIENT_CORE = 0
UPSTREAM_CORE = 1
HEADERS = {"Content-Type": "application/json", "Accept": "application/json", "Authorization": f"Bearer {UPSTREAM_KEY}"}

Send = Callable[[], Awaitable[int]]


async def _measure(send: Send, requests: int, concurrency: int) -> float:
    """CPU µs per request for ``requests`` calls of ``send``, ``concurrency`` at a time."""

    async def worker(count: int) -> int:
        received = 0
        for _ in range(count):
            received += await send()
        return received

    await asyncio.gather(*(worker(20) for _ in range(concurrency)))  # warm: connections open
    before = time.process_time()  # this process only: the fake upstream is a child
    received = await asyncio.gather(*(worker(requests // concurrency) for _ in range(concurrency)))
    spent = time.process_time() - before
    if not all(received):
        raise RuntimeError("a client received nothing")
    return spent / (requests // concurrency * concurrency) * 1e6


async def _aiohttp_run(url: str, stream: bool, requests: int, concurrency: int) -> float:
    connector = aiohttp.TCPConnector(limit=1000, limit_per_host=0, ttl_dns_cache=300, keepalive_timeout=60,
                                     enable_cleanup_closed=True)
    session = aiohttp.ClientSession(connector=connector, skip_auto_headers=("User-Agent",), auto_decompress=True,
                                    timeout=aiohttp.ClientTimeout(total=None))
    body = orjson.dumps({**REQUEST, "stream": stream})
    timeout = (aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=30) if stream
               else aiohttp.ClientTimeout(total=30, sock_connect=10))

    async def send() -> int:
        async with session.post(url, data=body, headers=HEADERS, timeout=timeout) as response:
            if stream:
                return sum([len(piece) async for piece in response.content.iter_any()])
            return len(await response.read())

    try:
        return await _measure(send, requests, concurrency)
    finally:
        await session.close()


async def _http1_run(url: str, stream: bool, requests: int, concurrency: int) -> float:
    client = http1.Http1Client()
    target = http1.Target.of(url, HEADERS)
    body = orjson.dumps({**REQUEST, "stream": stream})

    async def send() -> int:
        if stream:
            answer = await client.post_stream(target, body, read_timeout_s=30, connect_timeout_s=10)
            try:
                return sum([len(piece) async for piece in answer.pieces()])
            finally:
                answer.close()
        return len((await client.post(target, body, timeout_s=30, connect_timeout_s=10)).body)

    try:
        return await _measure(send, requests, concurrency)
    finally:
        await client.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--requests", type=int, default=4000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    cores = os.sched_getaffinity(0)
    with contextlib.suppress(OSError):  # fewer cores: unpinned
        os.sched_setaffinity(0, {CLIENT_CORE})
    try:
        runs = _rounds(args)
    finally:
        os.sched_setaffinity(0, cores)
    print(f"{args.requests} requests per run, {args.concurrency} at a time, {args.rounds} rounds "
          "(CPU µs per request of the client's process, user + system).\n")
    print("| client | answer | median | runs |\n|---|---|--:|---|")
    for key, figures in runs.items():
        name, answer = key.split(" ")
        print(f"| {name} | {answer} | {statistics.median(figures):.1f} | {', '.join(f'{f:.1f}' for f in figures)} |")
    return 0


def _rounds(args: argparse.Namespace) -> dict[str, list[float]]:
    runs: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="gw-upstream-client-") as temporary:
        fake = start_fake(Path(temporary), port=free_port(), core=UPSTREAM_CORE)
        url = fake.base_url + "/v1/chat/completions"
        try:
            for round_number in range(args.rounds):
                order = [("aiohttp", _aiohttp_run), ("http1", _http1_run)]
                if round_number % 2:
                    order.reverse()
                for stream in (False, True):
                    for name, run in order:
                        key = f"{name} {'stream' if stream else 'JSON'}"
                        figure = uvloop.run(run(url, stream, args.requests, args.concurrency))
                        runs.setdefault(key, []).append(figure)
                        print(f"round {round_number + 1}: {key}: {figure:.1f} µs CPU/request", file=sys.stderr)
        finally:
            fake.stop()
    return runs


if __name__ == "__main__":
    raise SystemExit(main())
