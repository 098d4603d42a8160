"""The results of one run as markdown tables, and the issue's performance targets as PASS/MISS.

Overheads are differences of percentiles (gateway p50 - direct p50), each measured with the
same client against the same fake upstream in the same run. A target measured on a phase that
had errors is a MISS whatever the number says: a fast error is not a fast answer.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Any

import orjson

from benchmarks.load import LoadResult

MIB = 1024 * 1024

# (key, label, streaming). c1-stream is measured by time to first byte (loadgen.py).
SCENARIOS: tuple[tuple[str, str, bool], ...] = (
    ("c1", "c=1", False),
    ("c1-stream", "c=1 stream, TTFB", True),
    ("c64", "c=64", False),
    ("c64-stream", "c=64 stream", True),
)

# The targets (gateway core, "Performance targets").
OVERHEAD_P50_MS = 0.6
OVERHEAD_P99_MS = 1.5
MIN_RPS = 3000.0
MIN_STREAMS_PER_S = 2500.0
MIN_VS_LITELLM = 30.0
MAX_CPU_VS_PASSTHROUGH = 2.5
MAX_STARTUP_S = 1.5
MAX_RSS_MIB = 120.0
# "No growth" between 25k and 50k requests, allowing for allocator noise (arena rounding).
MAX_RSS_GROWTH_MIB = 1.0
# The full profile's targets (issue 13): every stage on, tracing at 100 %.
FULL_OVERHEAD_P50_MS = 1.0
FULL_OVERHEAD_P99_MS = 2.5
FULL_MAX_CPU_VS_PASSTHROUGH = 3.5
FULL_MAX_RSS_MIB = 128.0
# Above this share of the machine's CPU used by other processes during a phase, its timings
# say more about the other processes than about the server: verdicts are marked "(noisy)".
NOISE_LIMIT_PCT = 15.0


@dataclass
class ServerRun:
    """Everything measured for one server (``direct`` is the fake upstream itself)."""

    name: str
    cpu_key: str  # the name whose CPU counts as this server's in LoadResult.cpu_s
    startup_s: float | None = None
    startup_noise_pct: float = 0.0
    first_answer_s: float | None = None  # from spawn to the first chat completion answered
    rss_idle: int | None = None
    rss_after: int | None = None
    phases: dict[str, LoadResult] = field(default_factory=dict)
    rss_marks: list[tuple[int, int]] = field(default_factory=list)  # (requests served so far, RSS bytes)
    notes: list[str] = field(default_factory=list)
    #: CPU µs per request in short phases alternating with a baseline server, round by round:
    #: scenario -> [(the baseline's µs, this server's µs), ...] (``benchmarks.run.interleave``).
    interleaved: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    #: The gateway's own account of its event loop over the run (``loop_summary``), read from
    #: its /metrics at the end; empty for servers without those series.
    loop: dict[str, float] = field(default_factory=dict)

    def interleaved_ratios(self, scenario: str) -> list[float]:
        """This server's CPU per request over the baseline's, one ratio per round, ascending."""
        return sorted(mine / base for base, mine in self.interleaved.get(scenario, []) if base > 0)

    def latency(self, scenario: str, pct: str) -> float | None:
        """The scenario's p50/p99 in µs: TTFB for the c=1 stream, whole response otherwise."""
        result = self.phases.get(scenario)
        if result is None:
            return None
        source = result.ttfb_us if scenario == "c1-stream" and result.ttfb_us else result.latency_us
        return source.get(pct)

    def rps(self, scenario: str) -> float | None:
        result = self.phases.get(scenario)
        return result.rps if result is not None else None

    def cpu_us(self, scenario: str) -> float | None:
        result = self.phases.get(scenario)
        return result.cpu_us_per_request(self.cpu_key) if result is not None else None

    def noise(self, scenario: str) -> float:
        result = self.phases.get(scenario)
        return result.noise_pct if result is not None else 0.0

    def errors(self, scenario: str) -> int:
        result = self.phases.get(scenario)
        return result.errors if result is not None else 0

    def to_json(self) -> dict[str, Any]:
        return {
            "startup_s": self.startup_s,
            "first_answer_s": self.first_answer_s,
            "rss_idle_mib": _mib(self.rss_idle),
            "rss_after_load_mib": _mib(self.rss_after),
            "rss_marks": [{"requests": n, "rss_mib": _mib(rss)} for n, rss in self.rss_marks],
            "phases": {key: result.to_json() for key, result in self.phases.items()},
            "cpu_us_per_request": {key: self.cpu_us(key) for key in self.phases},
            "notes": self.notes,
            "interleaved_cpu_us": {
                key: [{"baseline": base, "server": mine} for base, mine in rounds]
                for key, rounds in self.interleaved.items()
            },
            "event_loop": self.loop,
        }


@dataclass(frozen=True)
class Check:
    name: str
    goal: str
    measured: str
    ok: bool | None  # None: could not be measured in this run
    noise_pct: float = 0.0  # the most CPU other processes used in a phase this check relies on

    @property
    def verdict(self) -> str:
        if self.ok is None:
            return "n/a"
        verdict = "PASS" if self.ok else "MISS"
        return f"{verdict} (noisy: {self.noise_pct:.0f}%)" if self.noise_pct > NOISE_LIMIT_PCT else verdict


def _mib(value: int | None) -> float | None:
    return round(value / MIB, 1) if value is not None else None


def _fmt(value: float | None, digits: int = 2, suffix: str = "") -> str:
    return "-" if value is None else f"{value:,.{digits}f}{suffix}"


def _diff(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else a / b


def latency_table(runs: list[ServerRun]) -> str:
    direct = next((run for run in runs if run.name == "direct"), None)
    lines = [
        "| scenario | server | p50 ms | p99 ms | overhead p50 ms | overhead p99 ms | req/s | xdirect "
        "| CPU µs/req | errors | noise |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for key, label, _ in SCENARIOS:
        for run in runs:
            result = run.phases.get(key)
            if result is None:
                continue
            p50, p99 = run.latency(key, "p50"), run.latency(key, "p99")
            base50 = direct.latency(key, "p50") if direct and run is not direct else None
            base99 = direct.latency(key, "p99") if direct and run is not direct else None
            over50 = _diff(p50, base50)
            over99 = _diff(p99, base99)
            ratio = _ratio(run.rps(key), direct.rps(key) if direct else None)
            lines.append(
                f"| {label} | {run.name} | {_fmt(_ms(p50), 3)} | {_fmt(_ms(p99), 3)} | "
                f"{_fmt(_ms(over50), 3)} | {_fmt(_ms(over99), 3)} | {_fmt(result.rps, 0)} | "
                f"{_fmt(ratio, 2)} | {_fmt(run.cpu_us(key), 0)} | {result.errors} | {result.noise_pct:.0f}% |"
            )
    return "\n".join(lines)


def _ms(us: float | None) -> float | None:
    return None if us is None else us / 1000


def resource_table(runs: list[ServerRun]) -> str:
    """Start-up, memory and CPU per request. "CPU-bound req/s" is 1 s divided by the CPU time per
    request: what one core could serve if nothing else ran on it, which other processes on a
    shared machine disturb far less than they disturb the measured throughput."""
    passthrough = next((run for run in runs if run.name == "passthrough"), None)
    lines = [
        "| server | start-up s | first answer s | RSS idle MiB | RSS after load MiB | CPU µs/req c=64 | xpassthrough "
        "| CPU-bound req/s | CPU µs/req c=64 stream | xpassthrough | CPU-bound streams/s | notes |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|",
    ]
    for run in runs:
        cpu, cpu_stream = run.cpu_us("c64"), run.cpu_us("c64-stream")
        base = passthrough.cpu_us("c64") if passthrough else None
        base_stream = passthrough.cpu_us("c64-stream") if passthrough else None
        lines.append(
            f"| {run.name} | {_fmt(run.startup_s, 2)} | {_fmt(run.first_answer_s, 2)} | "
            f"{_fmt(_mib(run.rss_idle), 1)} | {_fmt(_mib(run.rss_after), 1)} | "
            f"{_fmt(cpu, 0)} | {_fmt(_ratio(cpu, base), 2)} | "
            f"{_fmt(_ratio(1e6, cpu), 0)} | {_fmt(cpu_stream, 0)} | {_fmt(_ratio(cpu_stream, base_stream), 2)} | "
            f"{_fmt(_ratio(1e6, cpu_stream), 0)} | {'; '.join(run.notes)} |"
        )
    return "\n".join(lines)


def memory_table(run: ServerRun) -> str:
    lines = ["| requests served | RSS MiB |", "|--:|--:|"]
    lines += [f"| {count:,} | {_fmt(_mib(rss), 1)} |" for count, rss in run.rss_marks]
    return "\n".join(lines)


def _rss_at(run: ServerRun, count: int) -> int | None:
    for served, rss in run.rss_marks:
        if served >= count:
            return rss
    return None


def evaluate(runs: list[ServerRun], *, soak: int) -> list[Check]:
    """The issue's targets, checked against this run."""
    by_name = {run.name: run for run in runs}
    direct, gateway = by_name.get("direct"), by_name.get("gateway")
    passthrough, litellm = by_name.get("passthrough"), by_name.get("litellm")
    checks: list[Check] = []
    if gateway is None or direct is None:
        return checks

    def add(
        name: str,
        value: float | None,
        unit: str,
        limit: float,
        *,
        at_least: bool = False,
        scenarios: tuple[str, ...] = (),
        against: ServerRun | None = None,
        detail: str = "",
        noise: float | None = None,
    ) -> None:
        """One target: ``value`` against ``limit`` (≥ when ``at_least``, else ≤), in ``unit``
        (a format spec, e.g. ``"{:.3f} ms"``). Errors in the gateway's ``scenarios`` make it a
        MISS; noise in them (or in ``against``'s, the baseline it is compared with) marks it."""
        goal = ("≥ " if at_least else "≤ ") + unit.format(limit)
        if value is None:
            checks.append(Check(name, goal, "not measured", None))
            return
        errors = sum(gateway.errors(scenario) for scenario in scenarios)
        if noise is None:
            runs = (gateway, against) if against is not None else (gateway,)
            noise = max((run.noise(scenario) for run in runs for scenario in scenarios), default=0.0)
        measured = unit.format(value) + detail + (f" ({errors} errors)" if errors else "")
        ok = value >= limit if at_least else value <= limit
        checks.append(Check(name, goal, measured, ok and errors == 0, noise))

    for key, what in (("c1", "non-streaming"), ("c1-stream", "streaming TTFB")):
        for pct, limit in (("p50", OVERHEAD_P50_MS), ("p99", OVERHEAD_P99_MS)):
            over = _ms(_diff(gateway.latency(key, pct), direct.latency(key, pct)))
            add(f"overhead c=1 {pct}, {what}", over, "{:.3f} ms", limit, scenarios=(key,), against=direct)
    add("throughput c=64", gateway.rps("c64"), "{:,.0f} req/s", MIN_RPS, at_least=True, scenarios=("c64",))
    add(
        "streams c=64",
        gateway.rps("c64-stream"),
        "{:,.0f} streams/s",
        MIN_STREAMS_PER_S,
        at_least=True,
        scenarios=("c64-stream",),
    )
    for key, what in (("c64", "req/s"), ("c64-stream", "streams/s")):
        ratio = _ratio(gateway.rps(key), litellm.rps(key)) if litellm else None
        add(
            f"vs LiteLLM proxy, {what} c=64",
            ratio,
            "{:,.1f}x",
            MIN_VS_LITELLM,
            at_least=True,
            scenarios=(key,),
            against=litellm,
        )
    for key, what in (("c64", "non-streaming"), ("c64-stream", "streaming")):
        mine, base = gateway.cpu_us(key), passthrough.cpu_us(key) if passthrough else None
        detail = f" ({mine:.0f} vs {base:.0f} µs)" if mine is not None and base is not None else ""
        add(
            f"CPU/request vs bare passthrough, {what}",
            _ratio(mine, base),
            "{:.2f}x",
            MAX_CPU_VS_PASSTHROUGH,
            scenarios=(key,),
            against=passthrough,
            detail=detail,
        )
    add("start-up to ready", gateway.startup_s, "{:.2f} s", MAX_STARTUP_S, noise=gateway.startup_noise_pct)
    full, half = _rss_at(gateway, soak), _rss_at(gateway, soak // 2)
    add(f"RSS after {soak:,} requests", _mib(full), "{:.1f} MiB", MAX_RSS_MIB)
    growth = None if full is None or half is None else (full - half) / MIB
    add(f"RSS growth {soak // 2:,} → {soak:,} requests", growth, "{:+.2f} MiB", MAX_RSS_GROWTH_MIB)
    return checks


def evaluate_full(runs: list[ServerRun], *, soak: int) -> list[Check]:
    """The full profile's targets (``gateway-full`` against direct and the passthrough)."""
    by_name = {run.name: run for run in runs}
    direct, full, passthrough = by_name.get("direct"), by_name.get("gateway-full"), by_name.get("passthrough")
    checks: list[Check] = []
    if full is None or direct is None:
        return checks

    def add(name: str, value: float | None, unit: str, limit: float, scenarios: tuple[str, ...],
            against: ServerRun | None, detail: str = "") -> None:
        goal = "≤ " + unit.format(limit)
        if value is None:
            checks.append(Check(name, goal, "not measured", None))
            return
        errors = sum(full.errors(scenario) for scenario in scenarios)
        runs_ = (full, against) if against is not None else (full,)
        noise = max((run.noise(scenario) for run in runs_ for scenario in scenarios), default=0.0)
        measured = unit.format(value) + detail + (f" ({errors} errors)" if errors else "")
        checks.append(Check(name, goal, measured, value <= limit and errors == 0, noise))

    for key, what in (("c1", "non-streaming"), ("c1-stream", "streaming TTFB")):
        for pct, limit in (("p50", FULL_OVERHEAD_P50_MS), ("p99", FULL_OVERHEAD_P99_MS)):
            over = _ms(_diff(full.latency(key, pct), direct.latency(key, pct)))
            add(f"full: overhead c=1 {pct}, {what}", over, "{:.3f} ms", limit, (key,), direct)
    for key, what in (("c64", "non-streaming"), ("c64-stream", "streaming")):
        mine, base = full.cpu_us(key), passthrough.cpu_us(key) if passthrough else None
        value = _ratio(mine, base)
        detail = f" ({mine:.0f} vs {base:.0f} µs)" if mine is not None and base is not None else ""
        ratios = full.interleaved_ratios(key)
        if ratios:
            # The verdict reads the interleaved rounds: the two servers measured seconds apart
            # in turn, so a drift of the machine between minutes moves both (see the README).
            sequential = f"{value:.2f}x{detail}" if value is not None else "not measured"
            detail = (f" (median of {len(ratios)} interleaved rounds, {ratios[0]:.2f}-{ratios[-1]:.2f}x; "
                      f"the longer phases minutes apart: {sequential})")
            value = statistics.median(ratios)
        add(f"full: CPU/request vs bare passthrough, {what}", value, "{:.2f}x",
            FULL_MAX_CPU_VS_PASSTHROUGH, (key,), passthrough, detail)
    whole, half = _rss_at(full, soak), _rss_at(full, soak // 2)
    add(f"full: RSS after {soak:,} requests", _mib(whole), "{:.1f} MiB", FULL_MAX_RSS_MIB, (), None)
    growth = None if whole is None or half is None else (whole - half) / MIB
    add(f"full: RSS growth {soak // 2:,} → {soak:,} requests", growth, "{:+.2f} MiB", MAX_RSS_GROWTH_MIB, (), None)
    return checks


def interleaved_table(runs: list[ServerRun]) -> str:
    """Each interleaved round's CPU per request, the baseline's and the server's, and their ratio."""
    lines = ["| server | scenario | round | passthrough µs/req | server µs/req | ratio |", "|---|---|--:|--:|--:|--:|"]
    for run in runs:
        for key, rounds in run.interleaved.items():
            for number, (base, mine) in enumerate(rounds, 1):
                ratio = f"{mine / base:.2f}x" if base > 0 else "-"
                lines.append(f"| {run.name} | {key} | {number} | {base:.0f} | {mine:.0f} | {ratio} |")
    return "\n".join(lines)


#: Lag thresholds the loop table counts ticks past (bucket bounds of gateway_event_loop_lag_seconds).
LAG_MARKS_S = (0.01, 0.05, 0.1)


def loop_summary(metrics_text: str) -> dict[str, float]:
    """From a gateway's /metrics: its loop-lag ticks in all and past each of ``LAG_MARKS_S``,
    and per collector generation the collections and the seconds they took."""
    from prometheus_client.parser import text_string_to_metric_families

    summary: dict[str, float] = {}
    for family in text_string_to_metric_families(metrics_text):
        for sample in family.samples:
            if sample.name == "gateway_event_loop_lag_seconds_count":
                summary["ticks"] = sample.value
            elif sample.name == "gateway_event_loop_lag_seconds_bucket":
                bound = float(sample.labels["le"])
                if bound in LAG_MARKS_S:
                    summary[f"ticks_within_{bound:g}s"] = sample.value
            elif sample.name in ("gateway_gc_pause_seconds_count", "gateway_gc_pause_seconds_sum"):
                kind = "collections" if sample.name.endswith("_count") else "seconds"
                summary[f"gc{sample.labels['generation']}_{kind}"] = sample.value
    return summary


def spans_dropped(metrics_text: str) -> float:
    """From a gateway's /metrics: the trace spans it dropped (every reason and destination). A
    dropped span is never built, so a run that drops them reads less CPU than tracing costs."""
    from prometheus_client.parser import text_string_to_metric_families

    return sum(sample.value for family in text_string_to_metric_families(metrics_text)
               for sample in family.samples if sample.name == "gateway_trace_spans_dropped_total")


def tokenizers_built(log_text: str) -> list[str]:
    """From a gateway's log: the tokenizers it built, in order ("o200k_base (compact)"). A stream
    cut before its usage event (``wrk`` ends each phase with requests in flight) is counted with
    its model's tokenizer, and the first one builds it: the compact encoding adds ~6 MiB of RSS
    from then on, tiktoken's (built when counting gets frequent) ~45, so an RSS reading means
    something different before and after."""
    built = []
    for line in log_text.splitlines():
        if '"built tokenizer ' in line:
            try:
                message = orjson.loads(line).get("msg", "")
            except orjson.JSONDecodeError:
                continue
            if isinstance(message, str) and message.startswith("built tokenizer "):
                built.append(message.removeprefix("built tokenizer "))
    return built


def loop_table(runs: list[ServerRun]) -> str:
    """Per gateway: how many of its loop's 0.25 s ticks ran late past each mark, and what the
    collector took by generation (count, total, mean)."""
    marks = " | ".join(f"ticks late ≥ {mark * 1000:g} ms" for mark in LAG_MARKS_S)
    lines = [f"| server | ticks | {marks} | collections gen 0 / 1 / 2 | seconds gen 0 / 1 / 2 | mean ms gen 2 |",
             "|---|--:|" + "--:|" * len(LAG_MARKS_S) + "--:|--:|--:|"]
    for run in runs:
        loop = run.loop
        if not loop.get("ticks"):
            continue
        ticks = loop["ticks"]
        late = " | ".join(f"{ticks - loop.get(f'ticks_within_{mark:g}s', ticks):,.0f}" for mark in LAG_MARKS_S)
        counts = " / ".join(f"{loop.get(f'gc{g}_collections', 0):,.0f}" for g in range(3))
        seconds = " / ".join(f"{loop.get(f'gc{g}_seconds', 0):.3f}" for g in range(3))
        full = loop.get("gc2_collections", 0)
        mean = f"{loop.get('gc2_seconds', 0) / full * 1000:.1f}" if full else "-"
        lines.append(f"| {run.name} | {ticks:,.0f} | {late} | {counts} | {seconds} | {mean} |")
    return "\n".join(lines)


def targets_table(checks: list[Check]) -> str:
    lines = ["| target | goal | measured | result |", "|---|---|---|---|"]
    lines += [f"| {c.name} | {c.goal} | {c.measured} | {c.verdict} |" for c in checks]
    return "\n".join(lines)


def render(runs: list[ServerRun], checks: list[Check], *, header: str) -> str:
    parts = [
        header,
        "",
        "### Latency and throughput",
        "",
        latency_table(runs),
        "",
        "### Start-up, memory and CPU",
        "",
        resource_table(runs),
    ]
    noisiest = max((result.noise_pct for run in runs for result in run.phases.values()), default=0.0)
    if noisiest > NOISE_LIMIT_PCT:
        parts[1:1] = [
            "",
            f"**Noisy run:** other processes used up to {noisiest:.0f}% of the machine's CPU during a phase "
            f'(column "noise"). Latency, throughput and start-up figures from phases above {NOISE_LIMIT_PCT:.0f}% '
            "measure the machine's load more than the servers; rerun on a quiet machine. Memory figures and the "
            "CPU ratios between servers are the least affected.",
        ]
    for run in runs:
        if run.name.startswith("gateway") and len(run.rss_marks) > 2:
            title = "Gateway memory over the run" if run.name == "gateway" else f"Memory over the run: {run.name}"
            parts += ["", f"### {title}", "", memory_table(run)]
    if any(run.loop.get("ticks") for run in runs):
        parts += ["", "### The gateway's event loop over the whole run (its own /metrics)", "", loop_table(runs)]
    if any(run.interleaved for run in runs):
        parts += ["", "### CPU per request, interleaved with the bare passthrough (c=64)", "", interleaved_table(runs)]
    if checks:
        parts += ["", "### Targets", "", targets_table(checks)]
    return "\n".join(parts) + "\n"
