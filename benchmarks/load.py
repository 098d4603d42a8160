"""One load phase: a load generator in its own pinned process, and what it cost the servers.

The load comes from ``wrk`` (C, HdrHistogram percentiles) when installed, else from
``benchmarks/loadgen.py``; time to first byte of streams always comes from ``loadgen.py``,
because wrk only sees whole responses. Around the phase the harness reads the CPU time of
every server it started, of the load generator (``RUSAGE_CHILDREN``) and of the whole
machine (``/proc/stat``): whatever the machine spent beyond those was another process's
work, reported as noise so a disturbed run can be recognised.
"""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import orjson

from benchmarks.procs import Server, pinned, system_busy_seconds
from benchmarks.servers import BENCH_DIR, REPO, Endpoint

Tool = Literal["wrk", "python"]
WRK_SCRIPT = BENCH_DIR / "wrk_post.lua"
WRK_MARKER = "WRK_JSON "


@dataclass(frozen=True)
class LoadSpec:
    endpoint: Endpoint
    body: Path
    concurrency: int
    stream: bool
    duration_s: float
    tool: Tool
    requests: int = 0  # stop after this many responses (0: run for duration_s)
    core: int | None = None


@dataclass
class LoadResult:
    requests: int
    errors: int
    duration_s: float
    latency_us: dict[str, float]
    ttfb_us: dict[str, float] | None = None
    tool: Tool = "wrk"
    error_samples: list[str] = field(default_factory=list)
    # Filled by measure(): CPU seconds per server name during the phase, and foreign CPU.
    cpu_s: dict[str, float] = field(default_factory=dict)
    loadgen_cpu_s: float = 0.0
    noise_pct: float = 0.0

    @property
    def rps(self) -> float:
        return self.requests / self.duration_s if self.duration_s > 0 else 0.0

    def cpu_us_per_request(self, server: str) -> float | None:
        spent = self.cpu_s.get(server)
        if spent is None or self.requests == 0:
            return None
        return spent / self.requests * 1e6

    def to_json(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "errors": self.errors,
            "duration_s": round(self.duration_s, 3),
            "rps": round(self.rps, 1),
            "latency_us": self.latency_us,
            "ttfb_us": self.ttfb_us,
            "tool": self.tool,
            "error_samples": self.error_samples,
            "cpu_s": self.cpu_s,
            "loadgen_cpu_s": round(self.loadgen_cpu_s, 3),
            "noise_pct": round(self.noise_pct, 1),
        }


class LoadFailed(RuntimeError):
    pass


def _wrk_argv(spec: LoadSpec) -> list[str]:
    # wrk takes whole seconds. With a request cap the Lua script ends the run at the cap, and the
    # duration only bounds a run that got stuck.
    duration = max(1, round(spec.duration_s))
    return [
        "wrk",
        "-t1",
        f"-c{spec.concurrency}",
        f"-d{duration}s",
        "--timeout",
        "30s",
        "--latency",
        "-s",
        str(WRK_SCRIPT),
        spec.endpoint.url,
        "--",
        str(spec.body),
        spec.endpoint.authorization or "",
        str(max(spec.requests, 0)),
    ]


def _loadgen_argv(spec: LoadSpec) -> list[str]:
    argv = [
        sys.executable,
        "-m",
        "benchmarks.loadgen",
        spec.endpoint.url,
        "--body",
        str(spec.body),
        "--concurrency",
        str(spec.concurrency),
        "--requests",
        str(max(spec.requests, 0)),
        "--duration",
        str(spec.duration_s),
    ]
    if spec.endpoint.authorization:
        argv += ["--authorization", spec.endpoint.authorization]
    if spec.stream:
        argv.append("--stream")
    return argv


def _parse(tool: Tool, stdout: str) -> dict[str, Any]:
    for line in reversed(stdout.splitlines()):
        if tool == "wrk" and line.startswith(WRK_MARKER):
            return orjson.loads(line[len(WRK_MARKER) :])  # type: ignore[no-any-return]
        if tool == "python" and line.startswith("{"):
            return orjson.loads(line)  # type: ignore[no-any-return]
    raise LoadFailed(f"{tool} printed no summary:\n{stdout[-2000:]}")


def run_load(spec: LoadSpec) -> LoadResult:
    """Run one load generator process to completion and parse its summary."""
    argv = _wrk_argv(spec) if spec.tool == "wrk" else _loadgen_argv(spec)
    proc = subprocess.Popen(
        pinned(argv, spec.core), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO
    )
    if spec.tool == "wrk" and spec.requests > 0:
        _end_wrk_at_cap(proc, deadline=time.monotonic() + spec.duration_s + 5)
    try:
        stdout, stderr = proc.communicate(timeout=spec.duration_s + 120)
    except subprocess.TimeoutExpired:
        proc.kill()
        stdout, stderr = proc.communicate()
        raise LoadFailed(f"{argv[0]} did not finish:\n{stdout[-2000:]}\n{stderr[-2000:]}") from None
    if proc.returncode != 0:
        raise LoadFailed(f"{argv[0]} exited with {proc.returncode}:\n{stdout[-2000:]}\n{stderr[-2000:]}")
    data = _parse(spec.tool, stdout)
    if spec.tool == "wrk":
        errors = data["errors"]
        # wrk's "read" errors include the connections it drops itself when the Lua cap stops it.
        counted = errors["connect"] + errors["write"] + errors["status"] + errors["timeout"]
        if spec.requests <= 0:
            counted += errors["read"]
        return LoadResult(
            requests=int(data["requests"]),
            errors=int(counted),
            duration_s=data["duration_us"] / 1e6,
            latency_us={k: float(v) for k, v in data["latency_us"].items()},
            tool="wrk",
            error_samples=[f"wrk errors: {errors}"] if counted else [],
        )
    return LoadResult(
        requests=int(data["requests"]),
        errors=int(data["errors"]),
        duration_s=data["duration_us"] / 1e6,
        latency_us=data["latency_us"],
        ttfb_us=data["ttfb_us"],
        tool="python",
        error_samples=list(data.get("error_samples", [])),
    )


def _end_wrk_at_cap(proc: subprocess.Popen[str], *, deadline: float) -> None:
    """Backstop for the Lua cap: once wrk's worker thread has stopped, SIGINT its main thread.

    The Lua script signals wrk itself when the cap is reached, which ends wrk's sleep at once;
    should that signal ever be lost, the main thread would sleep out the whole ``-d`` duration
    and report it as the run time. A capped run has a worker thread while it sends; when only
    the main thread is left, the run is over.
    """
    tasks = Path(f"/proc/{proc.pid}/task")
    saw_worker = False
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            threads = len(os.listdir(tasks))
        except OSError:
            return
        if threads >= 2:
            saw_worker = True
        elif saw_worker:
            time.sleep(0.05)  # the Lua script's own signal normally lands first
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
            return
        time.sleep(0.02)


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def measure(spec: LoadSpec, servers: Sequence[Server]) -> LoadResult:
    """``run_load`` plus the CPU each server, the load generator and everything else spent."""
    before = {server.name: server.cpu_seconds() for server in servers}
    children_before = _children_cpu()
    own_before = time.process_time()
    busy_before = system_busy_seconds()
    wall_before = time.perf_counter()
    result = run_load(spec)
    wall = time.perf_counter() - wall_before
    busy = system_busy_seconds() - busy_before
    own = time.process_time() - own_before
    result.loadgen_cpu_s = _children_cpu() - children_before
    result.cpu_s = {server.name: server.cpu_seconds() - before[server.name] for server in servers}
    ours = sum(result.cpu_s.values()) + result.loadgen_cpu_s + own
    cores = os.cpu_count() or 1
    result.noise_pct = max(0.0, busy - ours) / (wall * cores) * 100 if wall > 0 else 0.0
    return result
