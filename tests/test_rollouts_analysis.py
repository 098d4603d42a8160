"""The rollout analysis: verdicts, decisions, the loop on stored state, and the ledger source."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import insert

from gateway.audit import AuditLog
from gateway.catalog import Catalog, build_catalog
from gateway.config.policies import ModelsFile, PolicyBundle, TeamsFile
from gateway.config.rollouts import RolloutsFile
from gateway.prompts import Caller
from gateway.rollouts.analysis import LedgerMetrics, RolloutAnalyzer, VariantStats, decide, evaluate
from gateway.rollouts.control import RolloutControl
from gateway.rollouts.state import RolloutState, RolloutStateStore, StateConflict
from gateway.storage import Database, open_database
from gateway.storage.schema import ledger

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def catalog(**overrides: Any) -> Catalog:
    spec: dict[str, Any] = {
        "target": {"alias": "chat", "canary": {"deployment": 1}},
        "steps": [{"weight": 10}, {"weight": 50, "pause_s": 120}, {"weight": 100}],
        "interval_s": 60, "min_requests": 20, "failure_limit": 2,
        "checks": [{"metric": "error_rate", "max_over_stable": 0.02}, {"metric": "p95_ms", "max_ratio_to_stable": 1.5},
                   {"metric": "p99_ms", "max": 5000}],
    }
    spec.update(overrides)
    return build_catalog(PolicyBundle(
        models=ModelsFile.model_validate({"aliases": {"chat": {"deployments": [
            {"provider": "mock", "model": "a"}, {"provider": "mock", "model": "b", "weight": 0}]}}}),
        teams=TeamsFile.model_validate({"teams": {"t": {}}}),
        rollouts=RolloutsFile.model_validate({"rollouts": {"ro": spec}}),
    ))


def stats(requests: int, errors: int = 0, latency: float = 100.0) -> VariantStats:
    return VariantStats(requests, errors, tuple(sorted(latency + i % 10 for i in range(requests))), 0.001 * requests)


HEALTHY = {"stable": stats(200, 2), "canary": stats(40, 0)}


def test_verdicts() -> None:
    rollout = catalog().rollouts.by_id["ro"]
    assert evaluate(rollout, 0.1, {"stable": stats(200), "canary": stats(19)}).verdict == "inconclusive"
    assert evaluate(rollout, 0.1, {"canary": stats(50)}).verdict == "inconclusive"
    assert evaluate(rollout, 0.1, HEALTHY).verdict == "pass"
    errors = evaluate(rollout, 0.1, {"stable": stats(200, 2), "canary": stats(40, 4)})  # 10 % vs 1 % + 2
    assert errors.verdict == "fail" and errors.why == "failed: error_rate"
    [error_check] = [c for c in errors.checks if c.metric == "error_rate"]
    assert (error_check.canary, error_check.stable, error_check.bound) == (0.1, 0.01, 0.03)
    slow = evaluate(rollout, 0.1, {"stable": stats(200), "canary": stats(40, latency=300)})
    assert slow.verdict == "fail" and slow.why == "failed: p95_ms"
    # At 100 % nothing is left to compare with: only absolute bounds apply, and stable may be empty.
    assert evaluate(rollout, 1.0, {"canary": stats(40, 10)}).verdict == "pass"
    assert evaluate(rollout, 1.0, {"canary": stats(40, latency=6000)}).verdict == "fail"


def test_decisions() -> None:
    rollout = catalog().rollouts.by_id["ro"]
    running = RolloutState("ro", "running", step=0, started_at=T0, step_started_at=T0, revision=3)
    passed = evaluate(rollout, 0.1, HEALTHY)
    failed = evaluate(rollout, 0.1, {"stable": stats(200), "canary": stats(40, 20)})
    unsure = evaluate(rollout, 0.1, {})
    assert decide(rollout, running, unsure, T0) == ("record", 0)
    assert decide(rollout, running, failed, T0) == ("record", 1)
    assert decide(rollout, RolloutState("ro", "running", failures=1, revision=3), failed, T0) == ("abort", 2)
    assert decide(rollout, RolloutState("ro", "running", failures=1, revision=3), unsure, T0) == ("record", 1)
    assert decide(rollout, running, passed, T0) == ("advance", 0)
    at_pause = RolloutState("ro", "running", step=1, step_started_at=T0, revision=3)
    assert decide(rollout, at_pause, passed, T0 + timedelta(seconds=119)) == ("record", 0)
    assert decide(rollout, at_pause, passed, T0 + timedelta(seconds=120)) == ("advance", 0)
    assert decide(rollout, RolloutState("ro", "running", step=2, revision=3), passed, T0) == ("promote", 0)


# -- the loop ------------------------------------------------------------------------------------


class Source:
    def __init__(self) -> None:
        self.numbers: dict[str, VariantStats] = HEALTHY
        self.asked: list[datetime] = []

    async def window(self, rollout_id: str, since: datetime) -> dict[str, VariantStats]:
        self.asked.append(since)
        return self.numbers


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


class Alerts:
    def __init__(self) -> None:
        self.rollbacks: list[str] = []
        self.decisions: list[tuple[str, str]] = []

    def rolled_back(self, rollout: Any, analysis: Any) -> None:
        self.rollbacks.append(analysis.why)

    def decided(self, rollout: Any, action: str, verdict: str) -> None:
        self.decisions.append((action, verdict))


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Database]:
    database = await open_database(f"sqlite:///{tmp_path / 'ro.db'}")
    yield database
    await database.close()


def analyzer(db: Database, cat: Catalog, source: Source, clock: Clock, alerts: Alerts | None = None
             ) -> tuple[RolloutAnalyzer, RolloutControl]:
    @contextlib.asynccontextmanager
    async def no_prompts() -> AsyncIterator[Any]:
        raise AssertionError("not a prompt rollout")
        yield

    async def promote_alias(rollout: Any, actor: Any, *, reason: str | None, ticket: str | None) -> int:
        return 2

    control = RolloutControl(RolloutStateStore(db), AuditLog(db), lambda: cat, prompts=no_prompts,
                             promote_alias=promote_alias)
    return RolloutAnalyzer(control, lambda: cat, source, alerts=alerts, clock=clock), control


async def test_a_healthy_canary_advances_step_by_step_and_is_promoted(db: Database) -> None:
    cat, source, clock, alerts = catalog(), Source(), Clock(), Alerts()
    loop, control = analyzer(db, cat, source, clock, alerts)
    assert await loop.tick() == []  # an auto rollout: its start is stored first
    assert (await control.view("ro")).state.step_started_at == T0
    clock.now = T0 + timedelta(seconds=59)
    assert await loop.tick() == []  # not due yet
    clock.now = T0 + timedelta(seconds=60)
    assert await loop.tick() == [("ro", "advance")]
    assert await loop.tick() == []  # one decision per interval
    view = await control.view("ro")
    assert (view.state.step, view.weight) == (1, 50)
    clock.now += timedelta(seconds=60)
    assert await loop.tick() == [("ro", "record")]  # step 2 pauses 120 s
    clock.now += timedelta(seconds=60)
    assert await loop.tick() == [("ro", "advance")]
    clock.now += timedelta(seconds=60)
    source.numbers = {"canary": stats(100)}  # everything on the canary now
    assert await loop.tick() == [("ro", "promote")]
    view = await control.view("ro")
    assert (view.state.status, view.weight) == ("promoted", 100)
    clock.now += timedelta(seconds=600)
    assert await loop.tick() == []
    assert [step["action"] for step in view.state.history] == ["advance", "record", "advance", "promote"]
    assert source.asked[0] == T0 and source.asked[1] == T0 + timedelta(seconds=60)  # windows start at the step
    entries = await AuditLog(db).list(target="rollout:ro")
    assert [e.action for e in entries] == ["rollout.advance", "rollout.advance", "rollout.promote"]
    assert {e.actor_key_id for e in entries} == {"rollout-controller"}
    assert entries[0].after["detail"]["analysis"]["verdict"] == "pass"
    assert alerts.rollbacks == [] and alerts.decisions[-1] == ("promote", "pass")


async def test_a_failing_canary_is_rolled_back_after_failure_limit_checks(db: Database) -> None:
    cat, source, clock, alerts = catalog(), Source(), Clock(), Alerts()
    loop, control = analyzer(db, cat, source, clock, alerts)
    await control.start("ro", Caller.operator("ops"))
    source.numbers = {"stable": stats(200, 2), "canary": stats(40, 8)}
    for seconds, expected in [(60, "record"), (120, "abort")]:
        clock.now = datetime.now(UTC) + timedelta(seconds=seconds)
        assert await loop.tick() == [("ro", expected)]
    view = await control.view("ro")
    assert (view.state.status, view.weight, view.state.failures) == ("aborted", 0, 2)
    [entry] = [e for e in await AuditLog(db).list(target="rollout:ro") if e.action == "rollout.abort"]
    assert entry.reason == "automatic rollback: failed: error_rate"
    checks = entry.after["detail"]["analysis"]["checks"]
    assert next(c for c in checks if c["metric"] == "error_rate") == {
        "metric": "error_rate", "canary": 0.2, "stable": 0.01, "bound": 0.03, "ok": False}
    assert alerts.rollbacks == ["failed: error_rate"]


async def test_replicas_racing_make_one_decision_per_interval(db: Database) -> None:
    cat, clock = catalog(), Clock()
    first, control = analyzer(db, cat, Source(), clock)
    second, _ = analyzer(db, cat, Source(), clock)
    await first.tick()
    for step in range(1, 3):
        clock.now = T0 + timedelta(seconds=60 * step + (120 if step == 2 else 0))
        state = (await control.view("ro")).state
        # Both read the same state; only one write wins, the other drops its result.
        assert await first.check(cat.rollouts.by_id["ro"], state) == "advance"
        with pytest.raises(StateConflict):
            await second.check(cat.rollouts.by_id["ro"], state)
        assert (await control.view("ro")).state.step == step


async def test_ledger_metrics_count_what_says_something_about_a_variant(db: Database) -> None:
    def row(variant: str, status: int, kind: str = "request", latency: float = 100.0, rollout: str = "ro",
            ts: datetime | None = None) -> dict[str, Any]:
        return {"ts": ts or datetime.now(UTC), "request_id": "r", "team": "t", "kind": kind, "status": status,
                "variant": variant, "rollout_id": rollout, "latency_ms": latency, "cost_nanos": 1000,
                "prompt_tokens": 0, "completion_tokens": 0, "saved_nanos": 0}

    rows = [row("stable", 200), row("stable", 200, latency=300), row("stable", 429, kind="error"),
            row("canary", 502, kind="error"), row("canary", 504, kind="error"), row("canary", 200, kind="cut"),
            row("canary", 200), row("canary", 200, kind="cache_hit"), row("canary", 499, kind="cancelled"),
            row("canary", 500, rollout="other"), row("canary", 500, ts=datetime.now(UTC) - timedelta(hours=1))]
    async with db.engine.begin() as conn:
        await conn.execute(insert(ledger), rows)
    found = await LedgerMetrics(db).window("ro", datetime.now(UTC) - timedelta(minutes=5))
    assert (found["stable"].requests, found["stable"].errors) == (3, 0)  # a caller's 429 is not the variant's
    assert (found["canary"].requests, found["canary"].errors) == (4, 3)
    assert found["stable"].percentile(95) == 300 and found["canary"].cost_usd == pytest.approx(4e-6)


def test_twenty_healthy_rollouts_with_realistic_noise_are_never_rolled_back() -> None:
    """Both variants alike: log-normal latency and a 1 % error rate. With 200 requests per
    variant and window and two failures in a row needed, noise alone does not roll back."""
    import random

    rng = random.Random(11)
    cat = catalog(steps=[{"weight": w} for w in (5, 10, 25, 50, 100)], min_requests=200, failure_limit=2,
                  checks=[{"metric": "error_rate", "max_over_stable": 0.02},
                          {"metric": "p95_ms", "max_ratio_to_stable": 1.3}])
    rollout = cat.rollouts.by_id["ro"]

    def window(requests: int) -> VariantStats:
        latencies = sorted(rng.lognormvariate(6.0, 0.5) for _ in range(requests))
        return VariantStats(requests, sum(rng.random() < 0.01 for _ in range(requests)), tuple(latencies), 0.0)

    outcomes = []
    for _ in range(20):
        state = RolloutState("ro", "running", started_at=T0, step_started_at=T0, revision=1)
        for _check in range(40):
            weight = rollout.weights[state.step]
            numbers = {"canary": window(rng.randint(200, 400))}
            if weight < 1.0:
                numbers["stable"] = window(rng.randint(200, 400))
            action, failures = decide(rollout, state, evaluate(rollout, weight, numbers), T0)
            if action in ("abort", "promote"):
                break
            state = RolloutState("ro", "running", step=state.step + (action == "advance"), failures=failures,
                                 step_started_at=T0, revision=1)
        outcomes.append(action)
    assert outcomes == ["promote"] * 20


# -- false alarms ---------------------------------------------------------------------------------


def noisy_window(rng: Any, requests: int, weight: float, *, canary_errors: float = 0.01,
                 canary_slowdown: float = 1.0) -> dict[str, VariantStats]:
    """One interval's numbers: ``requests`` split by weight, latencies log-normal around
    800 ms (a long tail, as LLM calls have), a 1 % error rate on both variants."""
    import math

    found = {}
    canary = sum(1 for _ in range(requests) if rng.random() < weight)
    for variant, count, errors, slowdown in (("canary", canary, canary_errors, canary_slowdown),
                                             ("stable", requests - canary, 0.01, 1.0)):
        latencies = sorted(slowdown * rng.lognormvariate(math.log(800), 0.6) for _ in range(count))
        failed = sum(1 for _ in range(count) if rng.random() < errors)
        found[variant] = VariantStats(count, failed, tuple(latencies), 0.0)
    return found


def run_rollout(rng: Any, **canary: float) -> list[str]:
    """A rollout with the documented defaults (min_requests 200, error_rate <= stable + 0.02,
    p95 <= stable x 1.5, failure_limit 2) driven by noisy windows until it ends."""
    rollout = catalog(steps=[{"weight": w} for w in (10, 25, 50, 100)], min_requests=200,
                      checks=[{"metric": "error_rate", "max_over_stable": 0.02},
                              {"metric": "p95_ms", "max_ratio_to_stable": 1.5}]).rollouts.by_id["ro"]
    state = RolloutState("ro", "running", started_at=T0, step_started_at=T0, revision=1)
    actions = []
    for _ in range(40):
        weight = rollout.weights[state.step]
        action, failures = decide(rollout, state, evaluate(rollout, weight, noisy_window(rng, 3000, weight, **canary)),
                                  T0)
        actions.append(action)
        if action in ("promote", "abort"):
            break
        state = RolloutState("ro", "running", step=state.step + (action == "advance"), failures=failures,
                             started_at=T0, step_started_at=T0, revision=1)
    return actions


def test_the_settings_that_ignore_noise_still_catch_real_regressions() -> None:
    """Traffic split by weight (few canary requests at 10 %), twenty seeds each: healthy
    canaries are promoted, and the same settings roll back a real regression every time."""
    import random

    endings = [run_rollout(random.Random(seed))[-1] for seed in range(20)]
    assert endings == ["promote"] * 20
    # The same settings do catch a real regression: 5 % errors against 1 %, or twice as slow.
    assert [run_rollout(random.Random(seed), canary_errors=0.05)[-1] for seed in range(20)] == ["abort"] * 20
    assert [run_rollout(random.Random(seed), canary_slowdown=2.0)[-1] for seed in range(20)] == ["abort"] * 20
