"""Instructions per request, counted by valgrind: ``python -m benchmarks.instructions``.

CPU time on a shared VM moves by more than the differences worth measuring (the same full
gateway read 461-591 µs a request in consecutive 10 s runs). Instructions counted by
``valgrind --tool=callgrind`` do not: the same code and load give the same count within ~3 %,
whatever else the machine does. So this runs the bare passthrough and the full profile's
gateway (``benchmarks.servers``: every stage on, tracing to a local receiver) under callgrind,
with counting switched on only around ``--requests`` requests (``--concurrency`` at a time,
JSON then streams, after an uncounted warm-up), and reports instructions per request and the
ratio between the two.

What it does not see: time in the kernel (system calls, TCP), 13-19 % of the gateway's CPU in
``perf`` samples, more of the passthrough's; and waiting. Under callgrind a server runs ~30
times slower, so work that runs per second rather than per request (pollers, timers) weighs
~30 times more than under real load. Use it to compare two versions of the code (A/B), and
the CPU ratio of ``benchmarks.run --profile full`` for the target itself. Needs valgrind,
Redis (``--redis``) and a few minutes.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import orjson

from benchmarks import servers
from benchmarks.loadgen import run_load
from benchmarks.procs import Server, free_port, start_server

SERVER_CORE = 0
OTHER_CORE = 1


def _callgrind(out: Path) -> list[str]:
    return ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}/callgrind.out.%p", "--instr-atstart=no",
            "--dump-instr=no"]


def _send(url: str, authorization: str | None, requests: int, concurrency: int, stream: bool, prompt: bool) -> int:
    """``requests`` requests, ``concurrency`` at a time (the project's load generator); the
    number that failed. The full profile's bodies are numbered: its cache misses every time."""
    body = servers.UNIQUE_BODY if prompt else servers.REQUEST
    summary = asyncio.run(run_load(
        url, orjson.dumps({**body, "stream": True} if stream else body), concurrency=concurrency,
        requests=requests, duration_s=3600, authorization=authorization, stream=stream,
    ))
    return int(summary["errors"])


def _count(server: Server, out: Path, url: str, authorization: str | None, args: argparse.Namespace,
           stream: bool, prompt: bool) -> float:
    pid = str(server.proc.pid)
    _send(url, authorization, args.warmup, args.concurrency, stream, prompt)
    subprocess.run(["callgrind_control", "--zero", pid], check=True, capture_output=True)
    subprocess.run(["callgrind_control", "--instr=on", pid], check=True, capture_output=True)
    failures = _send(url, authorization, args.requests, args.concurrency, stream, prompt)
    subprocess.run(["callgrind_control", "--instr=off", pid], check=True, capture_output=True)
    before = set(out.glob(f"callgrind.out.{pid}*"))
    subprocess.run(["callgrind_control", "--dump", pid], check=True, capture_output=True)
    if failures:
        raise RuntimeError(f"{server.name}: {failures} of {args.requests} requests failed")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # the server's process writes the dump: wait for its last line
        for dumped in set(out.glob(f"callgrind.out.{pid}*")) - before:
            totals = re.search(r"^totals: (\d+)", dumped.read_text(), re.MULTILINE)
            if totals is not None:
                return int(totals.group(1)) / int(args.requests)
        time.sleep(0.2)
    raise RuntimeError(f"{server.name}: callgrind wrote no dump within 60 s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/15")
    parser.add_argument(
        "--without", action="append", default=[], choices=servers.FULL_FEATURES,
        help="also count the full profile without this feature (repeatable): what it costs, by difference",
    )
    args = parser.parse_args(argv)
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        print("valgrind is needed (apt-get install valgrind)", file=sys.stderr)
        return 2
    from gateway.testing.langfuse_receiver import LangfuseReceiver

    counts: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="gw-instructions-") as temporary:
        workdir = Path(temporary)
        fake = servers.start_fake(workdir, port=free_port(), core=OTHER_CORE)
        try:
            port = free_port()
            passthrough = start_server(
                "passthrough",
                [*_callgrind(workdir), sys.executable, "-m", "benchmarks.passthrough", "--upstream", fake.base_url,
                 "--port", str(port)],
                base_url=f"http://127.0.0.1:{port}", ready_path="/_health", log_path=workdir / "passthrough.log",
                core=SERVER_CORE, cwd=servers.REPO, timeout=600,
            )
            try:
                url = passthrough.base_url + servers.CHAT_PATH
                counts["passthrough"] = {kind: _count(passthrough, workdir, url, None, args, kind == "stream", False)
                                         for kind in ("JSON", "stream")}
            finally:
                passthrough.stop()
            with LangfuseReceiver(keep=False, cpus={OTHER_CORE}) as receiver:
                for without in ["", *args.without]:
                    name = f"gateway-full without {without}" if without else "gateway-full"
                    full = servers.FullProfile(
                        redis_url=args.redis, langfuse_url=receiver.url, langfuse_public_key=receiver.public_key,
                        langfuse_secret_key=receiver.secret_key, team="bench-" + uuid.uuid4().hex[:8],
                        without=frozenset({without} - {""}),
                    )
                    gateway, endpoint = servers.start_gateway(
                        workdir / name.replace(" ", "-"), fake.base_url, port=free_port(), core=SERVER_CORE,
                        full=full, wrap=_callgrind(workdir), timeout=600,
                    )
                    try:
                        key = endpoint.authorization
                        counts[name] = {
                            kind: _count(gateway, workdir, endpoint.url, key, args, kind == "stream", True)
                            for kind in ("JSON", "stream")
                        }
                    finally:
                        gateway.stop()
        finally:
            fake.stop()
    print(f"Instructions per request (callgrind, user space only), {args.requests} requests, "
          f"{args.concurrency} at a time.\n")
    print("| server | JSON | stream |\n|---|--:|--:|")
    for name, figures in counts.items():
        print(f"| {name} | {figures['JSON']:,.0f} | {figures['stream']:,.0f} |")
    ratio = {kind: counts["gateway-full"][kind] / counts["passthrough"][kind] for kind in ("JSON", "stream")}
    print(f"| ratio | {ratio['JSON']:.2f}x | {ratio['stream']:.2f}x |")
    for without in args.without:
        less = counts[f"gateway-full without {without}"]
        print(f"| {without}: the difference | {counts['gateway-full']['JSON'] - less['JSON']:+,.0f} "
              f"| {counts['gateway-full']['stream'] - less['stream']:+,.0f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
