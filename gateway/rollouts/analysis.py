"""The analysis: every ``interval_s``, canary against stable, then advance, promote or roll back.

**Numbers from the whole fleet.** ``LedgerMetrics`` reads the ledger, which every replica
writes: per variant of the rollout, over the window, the requests answered (kinds ``request``,
``error`` and ``cut``; cache hits, budget refusals, cancellations and shadow copies say nothing
about a variant's health), the errors among them (5xx, which includes timeouts, and streams cut
by the upstream; a caller's 4xx does not count), the latency percentiles and the cost per
request. The window is the last ``interval_s``, never earlier than the start of the current
step. Rows reach the ledger after its flush interval (about a second).

**A check** (``policies/rollouts.yaml`` ``checks``) bounds one metric of the canary: absolutely
(``max``), or relative to stable (``max_over_stable``: canary <= stable + x;
``max_ratio_to_stable``: canary <= stable * x). Below ``min_requests`` in either variant the
verdict is *inconclusive*: nothing advances and nothing fails. At a 100 % step there is no
stable traffic left to compare with: relative bounds are skipped, absolute bounds still apply.
Further metrics are registered with ``register_metric`` (name, how to compute it from a
variant's numbers) and become usable in ``checks``.

**Decisions** (``decide``, a pure function): a failed verdict counts one failure; at
``failure_limit`` failures in a row the rollout is aborted (rolled back). A passing verdict
clears the count and, once the step's ``pause_s`` has passed, advances to the next step, or
promotes after the last one.

**One controller.** Every replica runs the loop, but only the holder of the controller lease
(``gateway.rollouts.lease``: in Redis, else in the database) checks and acts; the others wait
for the lease. A check is due when the rollout's last recorded check is ``interval_s`` old. Its
result is stored with a compare-and-set on the rollout's revision, fenced by the lease
generation, and only after a winning write do side effects happen (the audit entry, the
alert). State (step, failure count, check history) lives in the database, so when the holder
dies its successor carries on from the stored state at its first tick, never repeating or
skipping a step.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal, Protocol

from sqlalchemy import select

from gateway.config.rollouts import CheckSpec, register_metric, register_metric_family
from gateway.rollouts.model import CANARY, STABLE
from gateway.storage.schema import ledger

if TYPE_CHECKING:
    from gateway.catalog import Catalog
    from gateway.rollouts.control import RolloutControl
    from gateway.rollouts.lease import Lease
    from gateway.rollouts.model import Rollout
    from gateway.rollouts.state import RolloutState
    from gateway.storage import Database

log = logging.getLogger("gateway.rollouts")

Verdict = Literal["pass", "fail", "inconclusive"]
_COUNTED_KINDS = ("request", "error", "cut")


@dataclass(frozen=True, slots=True)
class VariantStats:
    """One variant's numbers over a window."""

    requests: int = 0
    errors: int = 0
    latencies_ms: tuple[float, ...] = ()  # sorted
    cost_usd: float = 0.0

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    def percentile(self, q: float) -> float:
        """Nearest-rank percentile of the latencies (0 without data)."""
        if not self.latencies_ms:
            return 0.0
        rank = max(1, math.ceil(q / 100 * len(self.latencies_ms)))
        return self.latencies_ms[rank - 1]

    def summary(self) -> dict[str, Any]:
        return {"requests": self.requests, "errors": self.errors, "error_rate": round(self.error_rate, 6),
                "p95_ms": round(self.percentile(95), 3), "p99_ms": round(self.percentile(99), 3),
                "cost_per_request": round(self.cost_usd / self.requests, 9) if self.requests else 0.0}


#: How each metric named in ``checks`` is computed from a variant's numbers.
METRIC_VALUES: dict[str, Callable[[VariantStats], float]] = {
    "error_rate": lambda s: s.error_rate,
    "p95_ms": lambda s: s.percentile(95),
    "p99_ms": lambda s: s.percentile(99),
    "cost_per_request": lambda s: s.cost_usd / s.requests if s.requests else 0.0,
}


@dataclass(frozen=True, slots=True)
class MetricReader:
    """How one check reads its metric: the value, and (for sampled signals such as scores or
    feedback) how many samples it rests on; None: the rollout's ``min_requests`` is enough."""

    value: Callable[[VariantStats], float]
    samples: Callable[[VariantStats], int] | None = None


#: Metrics whose reader depends on the check (a threshold) or on a name (``feedback.NAME``), by
#: name or family prefix; registered by the module that measures them.
METRIC_READERS: dict[str, Callable[[CheckSpec], MetricReader]] = {}


def register_reader(name: str, description: str, reader: Callable[[CheckSpec], MetricReader], *,
                    family: bool = False) -> None:
    """Add a metric (or, with ``family``, every ``NAME.SUFFIX``) whose reader is built per check."""
    if family:
        register_metric_family(name, description)
    else:
        register_metric(name, description)
    METRIC_READERS[name] = reader


def reader_of(check: CheckSpec) -> MetricReader:
    value = METRIC_VALUES.get(check.metric)
    if value is not None:
        return MetricReader(value)
    found = METRIC_READERS.get(check.metric) or METRIC_READERS.get(check.metric.partition(".")[0])
    if found is None:
        raise KeyError(f"no reader for the metric {check.metric!r}")
    return found(check)


def register(name: str, description: str, value: Callable[[VariantStats], float]) -> None:
    """Add a metric to the analysis (and make its name valid in ``checks``). Metrics that need
    numbers the ledger does not hold (hallucination rate, user feedback) come with their own
    ``MetricSource`` that fills ``VariantStats`` subclasses."""
    register_metric(name, description)
    METRIC_VALUES[name] = value


class MetricSource(Protocol):
    async def window(self, rollout_id: str, since: datetime) -> dict[str, VariantStats]:
        """Each variant's numbers for the rollout's requests since ``since``, fleet-wide."""
        ...


class LedgerMetrics:
    """``MetricSource`` over the ledger table (every replica writes it)."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def window(self, rollout_id: str, since: datetime) -> dict[str, VariantStats]:
        c = ledger.c
        query = select(c.variant, c.status, c.kind, c.latency_ms, c.cost_nanos).where(
            c.rollout_id == rollout_id, c.ts >= since, c.kind.in_(_COUNTED_KINDS))
        async with self._db.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        grouped: dict[str, tuple[list[float], list[int]]] = {}
        for variant, status, kind, latency_ms, cost_nanos in rows:
            latencies, counts = grouped.setdefault(variant or "", ([], [0, 0, 0]))
            latencies.append(float(latency_ms))
            counts[0] += 1
            counts[1] += 1 if status >= 500 or kind == "cut" else 0
            counts[2] += int(cost_nanos)
        return {variant: VariantStats(counts[0], counts[1], tuple(sorted(latencies)), counts[2] / 1e9)
                for variant, (latencies, counts) in grouped.items()}


@dataclass(frozen=True, slots=True)
class CheckResult:
    metric: str
    canary: float
    stable: float | None
    bound: float | None  # the tightest bound that applied; None: nothing applied
    ok: bool

    def as_dict(self) -> dict[str, Any]:
        return {"metric": self.metric, "canary": round(self.canary, 6),
                "stable": round(self.stable, 6) if self.stable is not None else None,
                "bound": round(self.bound, 6) if self.bound is not None else None, "ok": self.ok}


@dataclass(frozen=True, slots=True)
class Analysis:
    verdict: Verdict
    checks: tuple[CheckResult, ...] = ()
    stats: dict[str, dict[str, Any]] = field(default_factory=dict)
    why: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {"verdict": self.verdict, "why": self.why, "checks": [c.as_dict() for c in self.checks],
                "variants": self.stats}


def _bound(check: CheckSpec, stable: float | None) -> float | None:
    bounds = [check.max] if check.max is not None else []
    if stable is not None:
        if check.max_over_stable is not None:
            bounds.append(stable + check.max_over_stable)
        if check.max_ratio_to_stable is not None:
            bounds.append(stable * check.max_ratio_to_stable)
    return min(bounds) if bounds else None


def evaluate(rollout: Rollout, weight: float, stats: dict[str, VariantStats]) -> Analysis:
    """The verdict of one check of ``rollout`` at canary ``weight`` on a window's ``stats``."""
    spec = rollout.spec
    canary, stable = stats.get(CANARY, VariantStats()), stats.get(STABLE, VariantStats())
    summary = {CANARY: canary.summary(), STABLE: stable.summary()}
    compare = weight < 1.0
    short = [name for name, found in ((CANARY, canary), (STABLE, stable))
             if found.requests < spec.min_requests and (name == CANARY or compare)]
    if short:
        return Analysis("inconclusive", stats=summary,
                        why=f"fewer than min_requests={spec.min_requests} for {', '.join(short)}")
    results = []
    few: list[str] = []
    for check in spec.checks:
        reader = reader_of(check)
        if reader.samples is not None and any(
            reader.samples(found) < check.min_samples for found in ((canary, stable) if compare else (canary,))
        ):
            few.append(check.metric)  # too few scores or feedback values to judge this one
            continue
        value = reader.value
        stable_value = value(stable) if compare else None
        bound = _bound(check, stable_value)
        canary_value = value(canary)
        results.append(CheckResult(check.metric, canary_value, stable_value, bound,
                                   bound is None or canary_value <= bound))
    failed = [r.metric for r in results if not r.ok]
    if failed:
        return Analysis("fail", tuple(results), summary, why=f"failed: {', '.join(failed)}")
    if few:
        return Analysis("inconclusive", tuple(results), summary,
                        why=f"fewer than min_samples for {', '.join(few)}")
    return Analysis("pass", tuple(results), summary, why="all checks passed")


Action = Literal["record", "advance", "promote", "abort"]


def decide(rollout: Rollout, state: RolloutState, analysis: Analysis, now: datetime) -> tuple[Action, int]:
    """What to do after ``analysis``, and the failure count to store."""
    if analysis.verdict == "inconclusive":
        return "record", state.failures
    if analysis.verdict == "fail":
        failures = state.failures + 1
        return ("abort" if failures >= rollout.spec.failure_limit else "record"), failures
    pause = rollout.spec.steps[min(state.step, len(rollout.spec.steps) - 1)].pause_s
    started = state.step_started_at or state.started_at
    if started is not None and (now - started).total_seconds() < pause:
        return "record", 0
    return ("promote" if state.step + 1 >= len(rollout.weights) else "advance"), 0


def last_checked(state: RolloutState) -> datetime | None:
    for entry in reversed(state.history):
        at = entry.get("at")
        if isinstance(at, str):
            return datetime.fromisoformat(at)
    return None


class Alerts(Protocol):
    def rolled_back(self, rollout: Rollout, analysis: Analysis) -> None: ...

    def decided(self, rollout: Rollout, action: str, verdict: str) -> None: ...


@dataclass(frozen=True, slots=True)
class AlertsChain:
    """Several ``Alerts`` told in order; one that fails does not keep the others from hearing."""

    members: tuple[Alerts, ...]

    def rolled_back(self, rollout: Rollout, analysis: Analysis) -> None:
        for member in self.members:
            try:
                member.rolled_back(rollout, analysis)
            except Exception:
                log.exception("a rollback alert failed", extra={"rollout": rollout.id})

    def decided(self, rollout: Rollout, action: str, verdict: str) -> None:
        for member in self.members:
            try:
                member.decided(rollout, action, verdict)
            except Exception:
                log.exception("a decision alert failed", extra={"rollout": rollout.id})


class RolloutAnalyzer:
    """The loop every replica runs; the lease holder alone decides (see the module docstring)."""

    def __init__(self, control: RolloutControl, catalog: Callable[[], Catalog], metrics: MetricSource, *,
                 alerts: Alerts | None = None, tick_s: float = 0.5, clock: Callable[[], datetime] | None = None,
                 lease: Lease | None = None, lease_s: float = 10.0,
                 on_lead: Callable[[str, int], Awaitable[None]] | None = None,
                 leading: Callable[[bool], None] | None = None) -> None:
        self._control = control
        self._catalog = catalog
        self._metrics = metrics
        self._alerts = alerts
        self._tick = tick_s
        self._clock = clock or (lambda: datetime.now(UTC))
        self._task: asyncio.Task[None] | None = None
        self._lease = lease
        self._lease_s = lease_s
        self._on_lead = on_lead  # a new generation taken by this replica (audited)
        self._leading = leading  # whether this replica leads, on every change (a gauge)
        self.generation = 0 if lease is not None else 1  # without a lease (tests, tools): always leading
        self._held_until = 0.0  # monotonic: past it, this replica no longer trusts its lease
        self._asked_at = -math.inf

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="rollout-analysis")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._lease is not None and self.generation:
            await self._lease.release()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._tick)
            try:
                if await self.lead():
                    await self.tick()
            except Exception:
                log.exception("rollout analysis failed; retrying")

    async def lead(self) -> bool:
        """Whether this replica holds the controller lease now: renewed every third of it."""
        lease = self._lease
        if lease is None:
            return True
        loop = asyncio.get_running_loop()
        # Holder and followers alike ask every third of the lease: a dead holder's lease expires
        # within one lease period and a follower takes it within a third more (< two periods).
        if loop.time() - self._asked_at >= self._lease_s / 3:
            asked = self._asked_at = loop.time()
            generation = await lease.take()
            if generation:
                self._held_until = asked + self._lease_s  # counted from before the call: conservative
            if generation != self.generation:
                if generation:
                    log.info("rollout controller lease taken", extra={"holder": lease.holder,
                                                                       "generation": generation})
                    if self._on_lead is not None:
                        await self._on_lead(lease.holder, generation)
                elif self.generation:
                    log.warning("rollout controller lease lost", extra={"holder": lease.holder})
                self.generation = generation
                if self._leading is not None:
                    self._leading(bool(generation))
        # A stalled holder whose lease may have expired meanwhile does not act on it.
        return bool(self.generation) and loop.time() < self._held_until

    def leads(self) -> bool:
        """Whether this replica held the controller lease at its last renewal, and still trusts it
        (no I/O: for background work that only the controller's replica should do)."""
        if self._lease is None:
            return True
        return bool(self.generation) and asyncio.get_running_loop().time() < self._held_until

    async def tick(self) -> list[tuple[str, str]]:
        """Check every running rollout that is due; returns (rollout id, action) for each decision."""
        from gateway.errors import GatewayError
        from gateway.rollouts.state import StateConflict

        done = []
        fence = self.generation
        for view in await self._control.views():
            rollout, state = view.rollout, view.state
            if state.status != "running":
                continue
            try:
                if state.revision == 0:
                    # A `start: auto` rollout runs from the moment its policy is applied; store
                    # when its first step began, so that its first check waits one interval.
                    now = self._clock()
                    await self._control.record(rollout.id, state, replace(state, started_at=now,
                                                                           step_started_at=now), fence=fence)
                    continue
                action = await self.check(rollout, state)
            except (StateConflict, GatewayError) as exc:  # moved meanwhile (an operator, a newer controller)
                log.debug("rollout check lost a race", extra={"rollout": rollout.id, "error": str(exc)})
                continue
            if action is not None:
                done.append((rollout.id, action))
        return done

    async def check(self, rollout: Rollout, state: RolloutState) -> str | None:
        now = self._clock()
        interval = timedelta(seconds=rollout.spec.interval_s)
        last = last_checked(state) or state.step_started_at or state.started_at
        if last is not None and now - last < interval:
            return None
        since = now - interval
        if state.step_started_at is not None and state.step_started_at > since:
            since = state.step_started_at
        weight = rollout.weights[min(state.step, len(rollout.weights) - 1)]
        analysis = evaluate(rollout, weight, await self._metrics.window(rollout.id, since))
        action, failures = decide(rollout, state, analysis, now)
        replica = self._lease.holder if self._lease is not None else f"{socket.gethostname()}:{os.getpid()}"
        entry = {"at": now.isoformat(), "by": replica, "generation": self.generation, "step": state.step,
                 "weight": weight * 100, "action": action, **analysis.as_dict()}
        # First the check itself, compare-and-set: only one replica gets to act on this interval.
        fence = self.generation
        recorded = await self._control.record(rollout.id, state, replace(
            state, failures=failures, history=(*state.history, entry)), fence=fence)
        detail = {"analysis": analysis.as_dict(), "failures": failures}
        if action == "advance":
            await self._control.advance(rollout.id, detail=detail, expected_revision=recorded.revision, at=now,
                                        fence=fence)
        elif action == "promote":
            await self._control.promote(rollout.id, None, detail=detail, fence=fence)
        elif action == "abort":
            await self._control.abort(rollout.id, None, reason=f"automatic rollback: {analysis.why}", detail=detail,
                                      fence=fence)
            log.error("rollout rolled back", extra={"rollout": rollout.id, "why": analysis.why,
                                                   "checks": [c.as_dict() for c in analysis.checks]})
            if self._alerts is not None:
                self._alerts.rolled_back(rollout, analysis)
        if self._alerts is not None:
            self._alerts.decided(rollout, action, analysis.verdict)
        return action
