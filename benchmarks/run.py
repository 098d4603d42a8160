"""The benchmark: ``python -m benchmarks.run`` (options: ``--help``; results: ``benchmarks/README.md``).

One command measures, in one run, against one fake upstream:

1. direct to the fake upstream (the baseline every overhead is computed from);
2. the bare passthrough (``benchmarks/passthrough.py``), the CPU yardstick;
3. the gateway (``gateway serve``, one worker), including start-up, a memory soak and,
   with ``--py-spy``, a py-spy profile under load;
3b. with ``--profile full``, the gateway again with every stage on (key auth, a prompt, a
   cache miss and a hard budget on Redis, an active rollout, tracing at 100 % to a local
   Langfuse receiver; ``servers.FullProfile``), with its own soak and the full profile's targets;
4. the LiteLLM proxy, when installed in ``benchmarks/.venv-litellm`` (or ``--litellm PATH``).

Placement on the 2-core machine: the fake upstream is pinned to core 1, each server under test
to core 0, and the load generator to the core the measured server does not use (core 0 when
going direct, core 1 otherwise), so the proxy under test has a core to itself.

Each server sees the same phases: a warm-up, then concurrency 1 (latency; streams by time
to first byte), then concurrency 64 (throughput), non-streaming and streaming. The tables go
to stdout and, with the raw numbers, to ``benchmarks/results/latest.{md,json}``.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import orjson

from benchmarks import report
from benchmarks.load import LoadResult, LoadSpec, Tool, measure
from benchmarks.procs import Server, free_port, http_get_text, http_post_status, wait_idle
from benchmarks.report import ServerRun
from benchmarks.servers import (
    BENCH_DIR,
    CHAT_PATH,
    REPO,
    Endpoint,
    FullProfile,
    find_litellm,
    start_fake,
    start_gateway,
    start_litellm,
    start_passthrough,
    write_bodies,
    wrk_path,
)

SERVER_CORE = 0
UPSTREAM_CORE = 1


@dataclass(frozen=True)
class Options:
    duration_s: float
    warmup_s: float
    c1_requests: int
    soak: int
    tool: Tool
    access_log: bool
    py_spy: bool
    out_dir: Path
    workdir: Path
    full: bool = False  # --profile full
    redis_url: str = ""
    interleave_rounds: int = 5  # --profile full: rounds against the passthrough (``interleave``)
    interleave_s: float = 4.0



def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


class Bench:
    """Runs the phases against one endpoint and collects them into a ``ServerRun``."""

    def __init__(self, options: Options, bodies: tuple[Path, Path], upstream: Server) -> None:
        self.options = options
        self.plain, self.stream = bodies
        self.upstream = upstream

    def phase(
        self,
        endpoint: Endpoint,
        servers: Sequence[Server],
        *,
        concurrency: int,
        stream: bool,
        duration_s: float,
        requests: int = 0,
        tool: Tool | None = None,
        load_core: int | None = None,
    ) -> LoadResult:
        spec = LoadSpec(
            endpoint=endpoint,
            body=self.stream if stream else self.plain,
            concurrency=concurrency,
            stream=stream,
            duration_s=duration_s,
            requests=requests,
            tool=tool or self.options.tool,
            core=load_core,
        )
        waited = wait_idle([server.pid for server in servers])
        if waited > 2:
            log(f"  waited {waited:.1f} s for {', '.join(s.name for s in servers)} to go idle")
        result = measure(spec, servers)
        log(
            f"  {endpoint.name}: c={concurrency}{' stream' if stream else ''} {result.requests} req "
            f"in {result.duration_s:.1f}s = {result.rps:,.0f}/s, p50 {result.latency_us['p50'] / 1000:.3f} ms, "
            f"p99 {result.latency_us['p99'] / 1000:.3f} ms, errors {result.errors}, noise {result.noise_pct:.0f}%"
        )
        if result.error_samples:
            log(f"    error samples: {result.error_samples[:3]}")
        return result

    def warm_up(self, endpoint: Endpoint, servers: Sequence[Server], load_core: int) -> int:
        """Fill pools and caches before measuring; returns the requests it sent."""
        if self.options.warmup_s <= 0:
            return 0
        served = 0
        for stream in (False, True):
            served += self.phase(
                endpoint, servers, concurrency=64, stream=stream, duration_s=self.options.warmup_s, load_core=load_core
            ).requests
        return served

    def measure_all(self, run: ServerRun, endpoint: Endpoint, servers: Sequence[Server], load_core: int) -> int:
        """The four measured phases; returns the requests they sent."""
        o = self.options
        run.phases["c1"] = self.phase(
            endpoint,
            servers,
            concurrency=1,
            stream=False,
            duration_s=o.duration_s,
            requests=o.c1_requests if o.tool == "python" else 0,
            load_core=load_core,
        )
        # Time to first byte needs a client that sees the first body byte: loadgen.py.
        run.phases["c1-stream"] = self.phase(
            endpoint,
            servers,
            concurrency=1,
            stream=True,
            duration_s=o.duration_s,
            requests=o.c1_requests,
            tool="python",
            load_core=load_core,
        )
        run.phases["c64"] = self.phase(
            endpoint, servers, concurrency=64, stream=False, duration_s=o.duration_s, load_core=load_core
        )
        run.phases["c64-stream"] = self.phase(
            endpoint, servers, concurrency=64, stream=True, duration_s=o.duration_s, load_core=load_core
        )
        return sum(result.requests for result in run.phases.values())

    def soak(self, run: ServerRun, endpoint: Endpoint, server: Server, served: int) -> int:
        """Bring the server to half and then all of ``--soak`` requests, half of them streams,
        recording RSS at each mark (the growth check)."""
        for mark in (self.options.soak // 2, self.options.soak):
            missing = mark - served
            if missing <= 0:
                continue
            for stream, share in ((False, missing // 2), (True, missing - missing // 2)):
                if share > 0:
                    # The duration only bounds a stuck run (it assumes at least 100 req/s).
                    served += self.phase(
                        endpoint,
                        [self.upstream, server],
                        concurrency=64,
                        stream=stream,
                        duration_s=max(30.0, share / 100),
                        requests=share,
                        load_core=UPSTREAM_CORE,
                    ).requests
            run.rss_marks.append((served, server.rss_bytes()))
        return served


def bench_direct(bench: Bench) -> ServerRun:
    log("direct to the fake upstream")
    endpoint = Endpoint("direct", bench.upstream.base_url + CHAT_PATH)
    run = ServerRun("direct", cpu_key=bench.upstream.name, notes=["fake upstream, CPU is the upstream's"])
    bench.warm_up(endpoint, [bench.upstream], SERVER_CORE)
    bench.measure_all(run, endpoint, [bench.upstream], SERVER_CORE)
    return run


def bench_proxy(bench: Bench, server: Server, endpoint: Endpoint, *, soak: bool = False) -> ServerRun:
    servers = [bench.upstream, server]
    run = ServerRun(
        endpoint.name,
        cpu_key=server.name,
        startup_s=server.startup_s,
        startup_noise_pct=server.startup_noise_pct,
        notes=list(server.notes),
    )
    # Ready is not the same as able to answer: the first request may still wait for lazily
    # built state (tokenizers, pools), so the time to the first answer is reported too.
    asked = time.perf_counter()
    headers = {"Content-Type": "application/json"}
    if endpoint.authorization:
        headers["Authorization"] = endpoint.authorization
    status = http_post_status(endpoint.url, bench.plain.read_bytes(), headers)
    run.first_answer_s = server.startup_s + (time.perf_counter() - asked)
    log(
        f"{endpoint.name}: ready in {server.startup_s:.2f} s, first answer ({status}) at "
        f"{run.first_answer_s:.2f} s (pid {server.pid})"
    )
    time.sleep(0.5)  # let start-up work (imports, migrations, lazy caches) settle before the idle RSS
    run.rss_idle = server.rss_bytes()
    run.rss_marks.append((0, run.rss_idle))
    served = bench.warm_up(endpoint, servers, UPSTREAM_CORE)
    if soak:
        run.rss_marks.append((served, server.rss_bytes()))
        served = bench.soak(run, endpoint, server, served)
    served += bench.measure_all(run, endpoint, servers, UPSTREAM_CORE)
    run.rss_after = server.rss_bytes()
    run.rss_marks.append((served, run.rss_after))
    if endpoint.name.startswith("gateway"):
        run.loop = report.loop_summary(http_get_text(server.base_url + "/metrics"))
    return run


def profile(bench: Bench, server: Server, endpoint: Endpoint, out_dir: Path) -> str:
    """py-spy under c=64 load (non-streaming, then streaming): where the server's CPU goes."""
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(py_spy).exists():
        return "py-spy is not installed (pip install py-spy): no profile."
    sections = []
    for stream in (False, True):
        name = "c64-stream" if stream else "c64"
        raw = out_dir / f"profile-{endpoint.name}-{name}.txt"
        seconds = max(2, round(bench.options.duration_s))
        argv = [
            py_spy,
            "record",
            "--pid",
            str(server.pid),
            "--rate",
            "250",
            "--duration",
            str(seconds),
            "--format",
            "raw",
            "--function",
            "--full-filenames",
            # Only the thread holding the GIL: threads blocked in C (aiosqlite's workers waiting
            # on their queue) would otherwise be sampled as busy.
            "--gil",
            "--output",
            str(raw),
        ]
        # Wait for idle *before* py-spy starts: the phase's own idle wait could otherwise use up
        # the recording's duration and leave a profile of an idle server.
        wait_idle([bench.upstream.pid, server.pid])
        # Not pinned: on the upstream's core (with the load generator) py-spy was starved and
        # recorded a fraction of its samples; its 250 Hz cost on the gateway's core is small.
        spy = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        time.sleep(0.5)
        bench.phase(
            endpoint,
            [bench.upstream, server],
            concurrency=64,
            stream=stream,
            duration_s=seconds - 0.5,
            load_core=UPSTREAM_CORE,
        )
        _, err = spy.communicate(timeout=60)
        if spy.returncode != 0 or not raw.exists():
            sections.append(f"py-spy failed for {name}: {err.decode(errors='replace')[-500:]}")
            continue
        sections.append(summarise_profile(raw, title=f"{endpoint.name}, c=64{' stream' if stream else ''}"))
    return "\n\n".join(sections)


def summarise_profile(raw: Path, *, title: str, top: int = 15) -> str:
    """Top functions by own time, own time by library, and the gateway's functions by inclusive
    time, from py-spy's collapsed stacks (recorded with ``--full-filenames``)."""
    own: Counter[str] = Counter()
    by_package: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        total += count
        own[_short(frames[-1])] += count
        by_package[_package(frames[-1])] += count
        for frame in set(frames):
            path = _frame_path(frame)
            # The CLI frames are on every stack (``gateway serve`` runs the server): not a cost.
            if path.startswith(GATEWAY_SOURCE) and not path.startswith(GATEWAY_CLI):
                inclusive[_short(frame)] += count
    if total == 0:
        return f"#### Profile: {title}\n\n(no samples)"
    lines = [f"#### Profile: {title} ({total:,} samples)", "", "| own time | function |", "|--:|---|"]
    lines += [f"| {n / total:.1%} | `{frame}` |" for frame, n in own.most_common(top)]
    lines += ["", "| own time | package |", "|--:|---|"]
    lines += [f"| {n / total:.1%} | `{name}` |" for name, n in by_package.most_common(top)]
    lines += ["", "| incl. time | gateway function |", "|--:|---|"]
    lines += [f"| {n / total:.1%} | `{frame}` |" for frame, n in inclusive.most_common(top)]
    return "\n".join(lines)


GATEWAY_SOURCE = str(REPO / "gateway") + os.sep
GATEWAY_CLI = str(REPO / "gateway" / "cli") + os.sep


def _frame_path(frame: str) -> str:
    """``func (/path/to/file.py:12)`` → ``/path/to/file.py``."""
    start = frame.rfind(" (")
    return frame[start + 2 :].rstrip(")").rsplit(":", 1)[0] if start >= 0 else ""


def _relative(path: str) -> str:
    """A source path as a reader knows it: ``aiohttp/client.py``, ``gateway/parse/stage.py``."""
    for marker in ("/site-packages/", "/lib-dynload/"):
        if marker in path:
            return path.split(marker, 1)[1]
    if path.startswith(str(REPO) + os.sep):
        return path[len(str(REPO)) + 1 :]
    python_lib = f"/lib/python{sys.version_info.major}.{sys.version_info.minor}/"
    return path.split(python_lib, 1)[1] if python_lib in path else path


def _short(frame: str) -> str:
    path = _frame_path(frame)
    return frame.replace(path, _relative(path)) if path else frame


def _package(frame: str) -> str:
    """The top-level package (or standard-library module) a frame's code belongs to."""
    relative = _relative(_frame_path(frame))
    head = relative.split("/", 1)[0]
    return head.removesuffix(".py") or "?"


def bench_full(options: Options, fake: Server) -> tuple[ServerRun, str]:
    """The gateway with every stage on, tracing to a local Langfuse receiver in this process
    (it only counts what it gets: nothing is kept), on the upstream's core: it stands for a
    remote Langfuse, as the fake stands for a remote upstream."""
    import uuid

    from gateway.testing.langfuse_receiver import LangfuseReceiver

    log("gateway, full profile: key auth, prompt, cache miss + hard budget on Redis, rollout, tracing 100 %")
    bench = Bench(options, write_bodies(options.workdir, unique=True), fake)
    with LangfuseReceiver(keep=False, cpus={UPSTREAM_CORE}) as receiver:
        full = FullProfile(redis_url=options.redis_url, langfuse_url=receiver.url,
                           langfuse_public_key=receiver.public_key, langfuse_secret_key=receiver.secret_key,
                           team="bench-" + uuid.uuid4().hex[:8])
        server, endpoint = start_gateway(options.workdir, fake.base_url, port=free_port(), core=SERVER_CORE,
                                         access_log=options.access_log, full=full)
        # A second passthrough, idle until the interleaved rounds (it shares the gateway's core).
        (options.workdir / "interleaved").mkdir(exist_ok=True)
        passthrough = start_passthrough(options.workdir / "interleaved", fake.base_url, port=free_port(),
                                        core=SERVER_CORE)
        profile_text = ""
        try:
            check_full_path(endpoint, bench.plain)
            run = bench_proxy(bench, server, endpoint, soak=True)
            interleave(bench, run, server, endpoint, Bench(options, write_bodies(options.workdir), fake), passthrough)
            if options.py_spy:
                profile_text = profile(bench, server, endpoint, options.out_dir)
            served = sum(result.requests for result in run.phases.values())
            dropped = report.spans_dropped(http_get_text(server.base_url + "/metrics"))
        finally:
            passthrough.stop()
            server.stop()
        time.sleep(1.0)
        run.notes.append(f"the receiver got {receiver.span_count:,} spans (measured phases alone: "
                         f"{served:,} requests); the gateway dropped {dropped:,.0f}")
        built = report.tokenizers_built(server.log_path.read_text(errors="replace"))
        if built:
            run.notes.append(f"tokenizers built during the run (a stream cut before its usage is counted with "
                             f"one: the compact one adds ~6 MiB of RSS, tiktoken's ~45): {', '.join(built)}")
    return run, profile_text


def interleave(bench: Bench, run: ServerRun, server: Server, endpoint: Endpoint,
               baseline: Bench, passthrough: Server) -> None:
    """The CPU ratio against the bare passthrough, measured in turns: ``--interleave-rounds``
    rounds of short c=64 phases (non-streaming, then streams), the passthrough and the gateway one
    after the other, the order swapped every round. The 10 s phases are minutes apart, and a VM's
    speed drifts between minutes by more than a target's margin (seen here: the same full-profile
    gateway at 461-591 µs a request in consecutive 10 s runs, the passthrough at 131-143 µs);
    phases seconds apart see the same machine.
    ``baseline`` sends the passthrough the core profile's body, as in its own phases.
    """
    options = bench.options
    if options.interleave_rounds <= 0:
        return
    log(f"CPU against the passthrough, interleaved: {options.interleave_rounds} rounds of "
        f"{options.interleave_s:g} s phases")
    passthrough_endpoint = Endpoint("passthrough", passthrough.base_url + CHAT_PATH)
    baseline.warm_up(passthrough_endpoint, [bench.upstream, passthrough], UPSTREAM_CORE)
    sides = [(baseline, passthrough, passthrough_endpoint), (bench, server, endpoint)]
    for number in range(options.interleave_rounds):
        for key, stream in (("c64", False), ("c64-stream", True)):
            spent: dict[str, float] = {}
            for side, proc, where in sides if number % 2 == 0 else sides[::-1]:
                result = side.phase(where, [bench.upstream, proc], concurrency=64, stream=stream,
                                    duration_s=options.interleave_s, load_core=UPSTREAM_CORE)
                cpu = result.cpu_us_per_request(proc.name)
                if result.errors or cpu is None:
                    raise RuntimeError(f"{proc.name}: {result.errors} errors in {result.requests} requests")
                spent[proc.name] = cpu
            run.interleaved.setdefault(key, []).append((spent[passthrough.name], spent[server.name]))


def check_full_path(endpoint: Endpoint, body: Path) -> None:
    """Fail early unless a request really goes through every stage the profile claims."""
    import urllib.request

    # A few tries: the very first request after start can find the cache's backend briefly
    # unavailable (its first connection) and bypass it; the measured phases come later.
    wanted = ("x-gateway-trace-id", "x-gateway-rollout", "x-prompt-version", "x-cache")
    headers: dict[str, str] = {}
    missing: list[str] = list(wanted)
    for attempt in range(5):
        request = urllib.request.Request(
            endpoint.url, data=body.read_bytes().replace(b"__N__", f"check-{attempt}".encode()),
            headers={"Content-Type": "application/json", "Authorization": endpoint.authorization or ""},
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            headers = {name.lower(): value for name, value in response.headers.items()}
        missing = [name for name in wanted if name not in headers]
        if not missing and headers.get("x-cache", "").upper() == "MISS":
            return
        time.sleep(0.5)
    raise RuntimeError(f"the full profile's request did not take every stage: missing {missing}, {headers}")


def machine_header(options: Options) -> str:
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load1, load5, _ = os.getloadavg()
    return (
        f"Run {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {os.cpu_count()} cores ({model}), Linux "
        f"{platform.release()}, Python {platform.python_version()}; load average before the run {load1:.2f} / "
        f"{load5:.2f}. Load generator: {options.tool}; {options.duration_s:g} s per phase; soak "
        f"{options.soak:,} requests; gateway access log {'on' if options.access_log else 'off'}; profile "
        f"{'full' if options.full else 'core'}."
    )


def run(options: Options, litellm: Path | None) -> tuple[str, dict[str, object], list[report.Check]]:
    bodies = write_bodies(options.workdir)
    runs: list[ServerRun] = []
    profile_text = ""
    with ExitStack() as stack:
        fake = start_fake(options.workdir, port=free_port(), core=UPSTREAM_CORE)
        stack.callback(fake.stop)
        bench = Bench(options, bodies, fake)
        runs.append(bench_direct(bench))

        server = start_passthrough(options.workdir, fake.base_url, port=free_port(), core=SERVER_CORE)
        try:
            runs.append(bench_proxy(bench, server, Endpoint("passthrough", server.base_url + CHAT_PATH)))
        finally:
            server.stop()

        server, endpoint = start_gateway(
            options.workdir, fake.base_url, port=free_port(), core=SERVER_CORE, access_log=options.access_log
        )
        try:
            # The full profile's soak is the one that counts (its RSS target): the core's is skipped.
            runs.append(bench_proxy(bench, server, endpoint, soak=not options.full))
            if options.py_spy and not options.full:
                profile_text = profile(bench, server, endpoint, options.out_dir)
        finally:
            server.stop()

        if options.full:
            full_run, full_profile = bench_full(options, fake)
            runs.append(full_run)
            profile_text = full_profile

        if litellm is not None:
            server, endpoint = start_litellm(
                options.workdir, litellm, fake.base_url, port=free_port(), core=SERVER_CORE
            )
            try:
                runs.append(bench_proxy(bench, server, endpoint))
            finally:
                server.stop()
    checks = report.evaluate(runs, soak=options.soak) if not options.full else []
    checks += report.evaluate_full(runs, soak=options.soak)
    text = report.render(runs, checks, header=machine_header(options))
    if litellm is None:
        text += "\nThe LiteLLM proxy was not measured: install it with `python3.11 -m venv benchmarks/.venv-litellm "
        text += "&& benchmarks/.venv-litellm/bin/pip install 'litellm[proxy]==1.108.7'`.\n"
    if profile_text:
        text += "\n### Profile (py-spy)\n\n" + profile_text + "\n"
    data: dict[str, object] = {
        "header": machine_header(options),
        "servers": {r.name: r.to_json() for r in runs},
        "targets": [{"name": c.name, "goal": c.goal, "measured": c.measured, "result": c.verdict} for c in checks],
    }
    return text, data, checks


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.run",
        description="Benchmark the gateway against direct calls, a bare passthrough and the LiteLLM proxy.",
    )
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per measured phase (default 10)")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of warm-up per server (default 2)")
    parser.add_argument(
        "--c1-requests",
        type=int,
        default=3000,
        help="requests at concurrency 1 with the Python client (capped by --duration)",
    )
    parser.add_argument(
        "--soak",
        type=int,
        default=50_000,
        help="gateway requests for the memory check; RSS is read at half and at all of it",
    )
    parser.add_argument(
        "--load", choices=("auto", "wrk", "python"), default="auto", help="load generator (auto: wrk when installed)"
    )
    parser.add_argument(
        "--litellm",
        default="auto",
        help="'auto' (benchmarks/.venv-litellm), 'off', or a virtualenv path with litellm[proxy]",
    )
    parser.add_argument(
        "--access-log", choices=("on", "off"), default="on", help="the gateway's access log (default on, as shipped)"
    )
    parser.add_argument(
        "--profile", choices=("core", "full"), default="core",
        help="core: the gateway as shipped (default); full: also every stage on, tracing at 100 %% (needs Redis)",
    )
    parser.add_argument(
        "--redis", default="redis://127.0.0.1:6379/15", help="Redis for --profile full (cache and budget)"
    )
    parser.add_argument("--interleave-rounds", type=int, default=5,
                        help="--profile full: rounds of c=64 phases alternating with the passthrough (default 5)")
    parser.add_argument("--interleave-s", type=float, default=4.0, help="seconds per interleaved phase (default 4)")
    parser.add_argument("--py-spy", action="store_true", help="also profile the gateway with py-spy under load")
    parser.add_argument("--out", type=Path, default=BENCH_DIR / "results", help="where latest.md/latest.json go")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (configs, server logs)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    # SIGTERM (e.g. from `timeout`) unwinds like Ctrl-C, so the servers are stopped on the way out.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    tool: Tool
    if args.load == "auto":
        tool = "wrk" if wrk_path() else "python"
    elif args.load == "wrk" and not wrk_path():
        print("wrk is not installed (apt-get install -y wrk); use --load python", file=sys.stderr)
        return 2
    else:
        tool = args.load
    if args.litellm == "off":
        litellm = None
    else:
        litellm = find_litellm(None if args.litellm == "auto" else Path(args.litellm))
        if litellm is None and args.litellm != "auto":
            print(f"no litellm executable under {args.litellm}/bin", file=sys.stderr)
            return 2
    args.out.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="gateway-bench-"))
    options = Options(
        duration_s=args.duration,
        warmup_s=args.warmup,
        c1_requests=args.c1_requests,
        soak=args.soak,
        tool=tool,
        access_log=args.access_log == "on",
        py_spy=args.py_spy,
        out_dir=args.out,
        workdir=workdir,
        full=args.profile == "full",
        redis_url=args.redis,
        interleave_rounds=args.interleave_rounds,
        interleave_s=args.interleave_s,
    )
    log(f"work directory {workdir}; load generator {tool}; LiteLLM {'at ' + str(litellm) if litellm else 'off'}")
    ok = False
    try:
        text, data, _ = run(options, litellm)
        ok = True
    finally:
        if ok and not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            log(f"logs and configs kept in {workdir}")
    (args.out / "latest.md").write_text(text)
    (args.out / "latest.json").write_bytes(orjson.dumps(data, option=orjson.OPT_INDENT_2))
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
