"""The benchmark harness works end to end (tiny scale); no timing is asserted.

Benchmarks are never timed in tests: a 2-core CI machine shared with the rest of the suite
cannot say anything about performance. What is checked is that ``python -m benchmarks.run``
starts every server, drives every phase through real HTTP with no errors, and produces the
tables and the JSON; that both load generators (wrk and the Python fallback) count and cap
correctly; and that the PASS/MISS logic and the profile summary compute what they claim.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import FakeHandle

from benchmarks import report
from benchmarks.load import LoadResult, LoadSpec, Tool, run_load
from benchmarks.run import summarise_profile
from benchmarks.servers import CHAT_PATH, Endpoint, write_bodies

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_harness_runs_end_to_end_and_prints_the_tables(tmp_path: Path) -> None:
    out = tmp_path / "results"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.run",
            "--duration",
            "1",
            "--warmup",
            "0",
            "--soak",
            "300",
            "--c1-requests",
            "40",
            "--litellm",
            "off",
            "--out",
            str(out),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=240,
        env={k: v for k, v in os.environ.items() if k not in ("GATEWAY_CONFIG", "DATABASE_URL", "REDIS_URL")},
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    text = done.stdout
    for heading in (
        "### Latency and throughput",
        "### Start-up, memory and CPU",
        "### Gateway memory over the run",
        "### The gateway's event loop over the whole run (its own /metrics)",
        "### Targets",
    ):
        assert heading in text
    for row in (
        "| c=1 | direct |",
        "| c=1 | gateway |",
        "| c=64 stream | passthrough |",
        "| c=1 stream, TTFB | gateway |",
    ):
        assert row in text
    assert (out / "latest.md").read_text() == text

    data = json.loads((out / "latest.json").read_text())
    assert set(data["servers"]) == {"direct", "passthrough", "gateway"}
    for name, server in data["servers"].items():
        assert set(server["phases"]) == {"c1", "c1-stream", "c64", "c64-stream"}, name
        for phase, result in server["phases"].items():
            assert result["requests"] > 0 and result["errors"] == 0, (name, phase, result)
            assert result["latency_us"]["p50"] > 0
        if name != "direct":
            assert server["startup_s"] > 0
            assert server["rss_after_load_mib"] > 10
            # Every c=64 request cost the server some CPU (ticks are 10 ms; the phase runs 1 s).
            assert server["cpu_us_per_request"]["c64"] > 0
    assert data["servers"]["gateway"]["phases"]["c1-stream"]["ttfb_us"]["p50"] > 0
    loop = data["servers"]["gateway"]["event_loop"]
    assert loop["ticks"] >= 4 and loop["gc0_collections"] >= 0 and "ticks_within_0.1s" in loop
    assert data["servers"]["passthrough"]["event_loop"] == {}
    marks = [mark["requests"] for mark in data["servers"]["gateway"]["rss_marks"]]
    assert marks[0] == 0 and any(150 <= n < 300 for n in marks) and any(n >= 300 for n in marks)
    verdicts = {target["name"]: target["result"] for target in data["targets"]}
    assert "throughput c=64" in verdicts and verdicts["vs LiteLLM proxy, req/s c=64"] == "n/a"
    # On a busy machine a timing verdict carries "(noisy: N%)"; the verdict itself comes first.
    assert all(v.split(" (noisy: ")[0] in ("PASS", "MISS", "n/a") for v in verdicts.values())


def _spec(
    fake: FakeHandle, tmp_path: Path, tool: Tool, *, stream: bool, requests: int, duration: float = 30.0
) -> LoadSpec:
    plain, streaming = write_bodies(tmp_path)
    return LoadSpec(
        endpoint=Endpoint("direct", fake.url + CHAT_PATH),
        body=streaming if stream else plain,
        concurrency=8,
        stream=stream,
        duration_s=duration,
        tool=tool,
        requests=requests,
    )


@pytest.mark.parametrize("tool", ["python", "wrk"])
@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_load_generators_stop_at_the_request_cap(fake: FakeHandle, tmp_path: Path, tool: Tool, stream: bool) -> None:
    if tool == "wrk" and shutil.which("wrk") is None:
        pytest.skip("wrk is not installed (apt-get install -y wrk)")
    result = run_load(_spec(fake, tmp_path, tool, stream=stream, requests=150))
    # wrk stops its connections at the cap; a few responses already on the wire may still count.
    assert 150 <= result.requests <= 150 + 8 + 8
    assert result.errors == 0
    assert result.duration_s < 25  # ended at the cap, not at the 30 s safety duration
    served = fake.stats()["by_path"].get("/v1/chat/completions", 0)
    assert served >= result.requests
    assert 0 < result.latency_us["p50"] <= result.latency_us["p99"] <= result.latency_us["max"]
    if tool == "python":
        assert result.ttfb_us is not None and 0 < result.ttfb_us["p50"] <= result.latency_us["p50"]


def test_python_load_generator_counts_upstream_errors(fake: FakeHandle, tmp_path: Path) -> None:
    fake.faults({"status": 500, "times": 5})
    result = run_load(_spec(fake, tmp_path, "python", stream=False, requests=30))
    assert result.errors == 5
    assert result.requests == 25
    assert any("HTTP 500" in sample for sample in result.error_samples)


def _result(
    rps: float,
    p50_us: float,
    p99_us: float,
    *,
    cpu: float = 0.0,
    errors: int = 0,
    ttfb: tuple[float, float] | None = None,
    server: str = "x",
) -> LoadResult:
    requests = int(rps * 10)
    return LoadResult(
        requests=requests,
        errors=errors,
        duration_s=10.0,
        latency_us={"p50": p50_us, "p90": p99_us, "p99": p99_us, "max": p99_us, "mean": p50_us},
        ttfb_us={"p50": ttfb[0], "p90": ttfb[1], "p99": ttfb[1], "max": ttfb[1], "mean": ttfb[0]} if ttfb else None,
        cpu_s={server: cpu * requests / 1e6},
    )


def _runs(gateway_c64_rps: float, gateway_errors: int = 0) -> list[report.ServerRun]:
    direct = report.ServerRun(
        "direct",
        cpu_key="x",
        phases={
            "c1": _result(4000, 200, 400),
            "c1-stream": _result(2000, 400, 900, ttfb=(300, 700)),
            "c64": _result(9000, 7000, 9000),
            "c64-stream": _result(4000, 16000, 20000),
        },
    )
    passthrough = report.ServerRun(
        "passthrough",
        cpu_key="x",
        phases={
            "c64": _result(6000, 9000, 12000, cpu=150),
            "c64-stream": _result(2500, 25000, 30000, cpu=380),
        },
    )
    gateway = report.ServerRun(
        "gateway",
        cpu_key="x",
        startup_s=1.2,
        rss_marks=[(0, 60 * report.MIB), (25_010, 80 * report.MIB), (50_020, 80 * report.MIB + 4096)],
        phases={
            "c1": _result(2000, 650, 2000),
            "c1-stream": _result(1000, 900, 1900, ttfb=(700, 1500)),
            "c64": _result(gateway_c64_rps, 15000, 20000, cpu=300, errors=gateway_errors),
            "c64-stream": _result(2600, 24000, 30000, cpu=1200),
        },
    )
    return [direct, passthrough, gateway]


def test_targets_pass_and_miss_by_the_issue_thresholds() -> None:
    verdicts = {c.name: c for c in report.evaluate(_runs(4000), soak=50_000)}
    assert verdicts["overhead c=1 p50, non-streaming"].verdict == "PASS"  # 0.45 ms
    assert verdicts["overhead c=1 p99, non-streaming"].verdict == "MISS"  # 1.6 ms
    assert verdicts["overhead c=1 p50, streaming TTFB"].verdict == "PASS"  # 0.4 ms
    assert verdicts["overhead c=1 p99, streaming TTFB"].verdict == "PASS"  # 0.8 ms
    assert verdicts["throughput c=64"].verdict == "PASS"
    assert verdicts["streams c=64"].verdict == "PASS"
    assert verdicts["CPU/request vs bare passthrough, non-streaming"].verdict == "PASS"  # 2.0x
    assert verdicts["CPU/request vs bare passthrough, streaming"].verdict == "MISS"  # 3.16x
    assert verdicts["vs LiteLLM proxy, req/s c=64"].verdict == "n/a"
    assert verdicts["start-up to ready"].verdict == "PASS"
    assert verdicts["RSS after 50,000 requests"].verdict == "PASS"
    assert verdicts["RSS growth 25,000 → 50,000 requests"].verdict == "PASS"

    slow = {c.name: c for c in report.evaluate(_runs(2999), soak=50_000)}
    assert slow["throughput c=64"].verdict == "MISS"
    # A phase with errors cannot pass, however fast it was.
    failing = {c.name: c for c in report.evaluate(_runs(8000, gateway_errors=3), soak=50_000)}
    assert failing["throughput c=64"].verdict == "MISS"
    assert "3 errors" in failing["throughput c=64"].measured
    # Other processes eating the CPU during a phase mark the verdicts that rely on it.
    noisy_runs = _runs(4000)
    noisy_runs[0].phases["c1"].noise_pct = 60.0  # the direct baseline of the c=1 overheads
    noisy = {c.name: c for c in report.evaluate(noisy_runs, soak=50_000)}
    assert noisy["overhead c=1 p50, non-streaming"].verdict == "PASS (noisy: 60%)"
    assert noisy["throughput c=64"].verdict == "PASS"
    assert "**Noisy run:**" in report.render(noisy_runs, list(noisy.values()), header="h")
    assert "Noisy run" not in report.render(_runs(4000), list(verdicts.values()), header="h")


def test_profile_summary_ranks_own_time_packages_and_gateway_functions(tmp_path: Path) -> None:
    raw = tmp_path / "profile.txt"
    site = "/venv/lib/python3.11/site-packages"
    serve = f"serve ({REPO}/gateway/server/openai_api.py:80)"
    raw.write_text(
        f"run ({site}/uvicorn/main.py:1);{serve};loads ({site}/orjson/__init__.py:1) 30\n"
        f"run ({site}/uvicorn/main.py:1);{serve} 10\n"
        f"run ({site}/uvicorn/main.py:1);data_received ({site}/uvicorn/protocols/http/httptools_impl.py:5) 60\n"
    )
    text = summarise_profile(raw, title="test")
    assert "(100 samples)" in text
    assert "| 60.0% | `data_received (uvicorn/protocols/http/httptools_impl.py:5)` |" in text
    assert "| 60.0% | `uvicorn` |" in text and "| 30.0% | `orjson` |" in text and "| 10.0% | `gateway` |" in text
    # Inclusive time of the gateway's own functions: 30 + 10 samples had serve on the stack.
    assert "| 40.0% | `serve (gateway/server/openai_api.py:80)` |" in text
    assert "run (" not in text.split("gateway function")[1]  # uvicorn is not the gateway


def test_the_full_profile_ablation_leaves_out_what_it_names_and_reports_the_difference(tmp_path: Path) -> None:
    import argparse

    import yaml

    from benchmarks.full_ablation import report, variants
    from benchmarks.servers import FULL_FEATURES, FullProfile, write_gateway_config

    def written(without: frozenset[str]) -> tuple[dict[str, object], dict[str, object], dict[str, object]]:
        root = tmp_path / ("-".join(sorted(without)) or "full")
        full = FullProfile("redis://127.0.0.1:6379/15", "http://127.0.0.1:1", "pk", "sk", "bench-t", without)
        path = write_gateway_config(root, "http://127.0.0.1:2", access_log=True, full=full)
        config = yaml.safe_load(path.read_text())
        team = yaml.safe_load((root / "policies" / "teams.yaml").read_text())["teams"]["bench-t"]
        rollouts = yaml.safe_load((root / "policies" / "rollouts.yaml").read_text())["rollouts"]
        return config, team, rollouts

    config, team, rollouts = written(frozenset())
    assert "tracing" in config and "cache" in team and "budget" in team and "bench-canary" in rollouts
    config, team, rollouts = written(frozenset(FULL_FEATURES))
    assert "tracing" not in config and "cache" not in team and "budget" not in team and rollouts == {}
    assert config["redis"]["url"]  # what stays: key auth, the prompt, Redis for what is left

    found = variants()
    assert [v.without for v in found][1:5] == [frozenset({f}) for f in FULL_FEATURES]
    for variant, cpu in zip(found, (1000, 800, 900, 750, 980, 400), strict=True):
        variant.cpu_us += [cpu, cpu + 10]
        variant.p50_ms += [1.0, 1.2]
        variant.p99_ms += [3.0, 3.5]
    table = report(found, argparse.Namespace(concurrency=1, seconds=10.0, rounds=2, stream=False))
    assert "| without budget | 755 [750, 760] | -250 | 1.100 | 3.250 |" in table
    assert table.startswith("Non-streaming, concurrency 1")
    streams = report(found, argparse.Namespace(concurrency=64, seconds=6.0, rounds=2, stream=True))
    assert streams.startswith("Streams, concurrency 64, 6 s per run, 2 rounds")


def test_the_full_profiles_cpu_ratio_reads_the_interleaved_rounds() -> None:
    direct, passthrough, _ = _runs(4000)
    full = report.ServerRun(
        "gateway-full", cpu_key="x",
        phases={"c64": _result(1500, 30000, 60000, cpu=600), "c64-stream": _result(1000, 40000, 70000, cpu=700)},
    )
    sequential = {c.name: c for c in report.evaluate_full([direct, passthrough, full], soak=50_000)}
    # Without rounds: the long phases' ratio (the passthrough's c64 takes 150 µs in _runs).
    assert sequential["full: CPU/request vs bare passthrough, non-streaming"].measured == "4.00x (600 vs 150 µs)"

    # Round by round: (passthrough µs, full µs); the verdict is the median ratio.
    full.interleaved = {"c64": [(100, 330), (120, 480), (110, 352)], "c64-stream": [(200, 800), (190, 760)]}
    checks = {c.name: c for c in report.evaluate_full([direct, passthrough, full], soak=50_000)}
    plain = checks["full: CPU/request vs bare passthrough, non-streaming"]
    assert plain.verdict == "PASS"  # ratios 3.20, 3.30, 4.00: median 3.30
    assert plain.measured.startswith("3.30x (median of 3 interleaved rounds, 3.20-4.00x;")
    assert plain.measured.endswith("minutes apart: 4.00x (600 vs 150 µs))")
    assert checks["full: CPU/request vs bare passthrough, streaming"].verdict == "MISS"  # 4.00x
    text = report.render([direct, passthrough, full], list(checks.values()), header="h")
    assert "| gateway-full | c64 | 2 | 120 | 480 | 4.00x |" in text
    assert full.to_json()["interleaved_cpu_us"]["c64-stream"][1] == {"baseline": 190, "server": 760}


def test_the_loop_table_reads_the_gateways_own_lag_and_collection_series() -> None:
    from benchmarks.report import ServerRun, loop_summary, loop_table

    metrics = "\n".join([
        "# TYPE gateway_event_loop_lag_seconds histogram",
        *(f'gateway_event_loop_lag_seconds_bucket{{le="{le}"}} {n}'
          for le, n in (("0.001", 90), ("0.01", 96), ("0.05", 98), ("0.1", 99), ("+Inf", 100))),
        "gateway_event_loop_lag_seconds_count 100", "gateway_event_loop_lag_seconds_sum 0.9",
        "# TYPE gateway_gc_pause_seconds histogram",
        *(f'gateway_gc_pause_seconds_{kind}{{generation="{g}"}} {value}'
          for g, count, seconds in ((0, 40, 0.08), (1, 4, 0.02), (2, 2, 0.07))
          for kind, value in (("count", count), ("sum", seconds))),
        "",
    ])
    summary = loop_summary(metrics)
    assert summary == {"ticks": 100, "ticks_within_0.01s": 96, "ticks_within_0.05s": 98, "ticks_within_0.1s": 99,
                       "gc0_collections": 40, "gc0_seconds": 0.08, "gc1_collections": 4, "gc1_seconds": 0.02,
                       "gc2_collections": 2, "gc2_seconds": 0.07}
    table = loop_table([ServerRun("gateway-full", cpu_key="gateway-full", loop=summary),
                        ServerRun("passthrough", cpu_key="passthrough")])
    assert table.splitlines()[2] == "| gateway-full | 100 | 4 | 2 | 1 | 40 / 4 / 2 | 0.080 / 0.020 / 0.070 | 35.0 |"
    assert "passthrough" not in table



def test_the_full_profile_counts_the_spans_the_gateway_dropped() -> None:
    from benchmarks.report import spans_dropped

    metrics = "\n".join([
        "# TYPE gateway_trace_spans_dropped_total counter",
        'gateway_trace_spans_dropped_total{destination="langfuse",reason="queue_full"} 12.0',
        'gateway_trace_spans_dropped_total{destination="langfuse",reason="export_failed"} 3.0',
        'gateway_trace_spans_dropped_created{destination="langfuse",reason="queue_full"} 1.7e+09',
        "",
    ])
    assert spans_dropped(metrics) == 15
    assert spans_dropped("") == 0


def test_the_full_profile_names_the_tokenizers_the_gateway_built() -> None:
    from benchmarks.report import tokenizers_built

    log = "\n".join([
        '{"ts":"t","level":"info","logger":"gateway.access","msg":"request","status":499}',
        '{"ts":"t","level":"info","logger":"gateway.usage.tokens","msg":"built tokenizer o200k_base (compact)"}',
        'not json "built tokenizer x"',
        '{"ts":"t","level":"info","logger":"gateway.usage.tokens","msg":"built tokenizer o200k_base (tiktoken)"}',
    ])
    assert tokenizers_built(log) == ["o200k_base (compact)", "o200k_base (tiktoken)"]
    assert tokenizers_built("") == []


def test_the_upstream_client_benchmark_runs_both_clients(capsys: pytest.CaptureFixture[str]) -> None:
    """``benchmarks.upstream_client`` at a tiny scale: both clients, both kinds of answer."""
    from benchmarks.upstream_client import main

    cores = os.sched_getaffinity(0)
    assert main(["--requests", "40", "--concurrency", "4", "--rounds", "1"]) == 0
    assert os.sched_getaffinity(0) == cores  # the test process is not left pinned to one core
    table = capsys.readouterr().out
    for row in ("| aiohttp | JSON |", "| http1 | JSON |", "| aiohttp | stream |", "| http1 | stream |"):
        assert row in table
