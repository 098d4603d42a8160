"""Budget counters against a real Redis (and in process): atomic admission, settling, rebuilds
from the ledger, reconciliation of dead requests, heartbeats and alerts."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis
from sqlalchemy import insert

from gateway.budgets.alerts import Alerts, BudgetMetrics, UsedRatioCollector, crossings
from gateway.budgets.backend import BudgetUnavailable, Refusal, Reservation
from gateway.budgets.memory_backend import MemoryBackend
from gateway.budgets.policy import TeamBudget, team_budget, window
from gateway.budgets.redis_backend import RedisBackend, _Settlement
from gateway.config.policies import BudgetSpec
from gateway.config.settings import BudgetSettings
from gateway.pricing import to_nanos
from gateway.redis.wire import RedisUnavailable, RedisWire, Script
from gateway.storage import Database, open_database
from gateway.storage.schema import ledger
from support.budgets import WORST, WebhookReceiver, counters, period_key
from support.redis_server import RedisServer
from support.servers import free_port

pytestmark = pytest.mark.redis

DOLLAR = to_nanos(1.0)


def budget(limit: float = 1.0, **spec: Any) -> TeamBudget:
    return team_budget("t", BudgetSpec(limit_usd=limit, period=spec.pop("period", "daily"), **spec))


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Database]:
    database = await open_database(f"sqlite:///{tmp_path / 'ledger.db'}")
    yield database
    await database.close()


@pytest.fixture
def rclient(redis_url: str) -> redis.Redis:
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    return client


def alerts() -> Alerts:
    return Alerts(BudgetMetrics(None), webhook_timeout_s=2.0)


class Rows:
    """Collects the ledger rows a backend writes for reconciled reservations."""

    def __init__(self, db: Database | None = None) -> None:
        self.rows: list[dict[str, Any]] = []
        self._db = db

    async def __call__(self, rows: list[dict[str, Any]]) -> None:
        self.rows.extend(rows)
        if self._db is not None:
            async with self._db.engine.begin() as conn:
                await conn.execute(insert(ledger), rows)


def redis_backend(
    redis_url: str, db: Database, team: TeamBudget, *, rows: Rows | None = None, alert: Alerts | None = None,
    **settings: Any,
) -> RedisBackend:
    config = BudgetSettings(**{"rebuild_settle_s": 0.0, "reconcile_interval_s": 0.2, **settings})
    return RedisBackend(
        RedisWire(redis_url, timeout_s=2.0), db, alert or alerts(), config,
        budgets=lambda: [team], write_rows=rows or Rows(),
    )


async def seed(db: Database, team: str, cost_usd: float, *, when: datetime | None = None, request_id: str = "seed",
               key_id: str = "key_a", alias: str = "priced") -> None:
    async with db.engine.begin() as conn:
        await conn.execute(insert(ledger).values(
            ts=when or datetime.now(UTC), request_id=request_id, team=team, key_id=key_id, alias=alias,
            kind="request", status=200, cost_nanos=to_nanos(cost_usd), prompt_tokens=0, completion_tokens=0,
            saved_nanos=0, latency_ms=1.0,
        ))


async def reserve(backend: Any, team: TeamBudget, amount: int = WORST, key_id: str = "key_a",
                  alias: str = "priced", request_id: str = "r") -> Reservation | Refusal:
    result: Reservation | Refusal = await backend.reserve(
        team, team.scopes_for(key_id, alias), amount, request_id=request_id, key_id=key_id, alias=alias
    )
    return result


async def settled(backend: RedisBackend) -> None:
    """Wait until the background settler has sent everything queued."""
    for _ in range(200):
        if not backend._queue:
            await asyncio.sleep(0.05)  # the last batch's reply
            if not backend._queue:
                return
        await asyncio.sleep(0.01)
    raise AssertionError("settlements still queued")


# -- periods and thresholds --------------------------------------------------------------


def test_calendar_periods_in_utc() -> None:
    moment = datetime(2025, 12, 31, 23, 59, 59, tzinfo=UTC)  # a Wednesday
    day, week, month = (window(p, moment) for p in ("daily", "weekly", "monthly"))  # type: ignore[arg-type]
    assert (day.start, day.end) == (datetime(2025, 12, 31, tzinfo=UTC), datetime(2026, 1, 1, tzinfo=UTC))
    assert (week.start, week.end) == (datetime(2025, 12, 29, tzinfo=UTC), datetime(2026, 1, 5, tzinfo=UTC))
    assert (month.start, month.end) == (datetime(2025, 12, 1, tzinfo=UTC), datetime(2026, 1, 1, tzinfo=UTC))
    assert day.label == "daily:2025-12-31" and week.label == "weekly:2025-12-29"
    assert month.resets_at == "2026-01-01T00:00:00Z"
    assert day.seconds_left(moment) == 1
    assert window("daily", moment + timedelta(seconds=1)).label == "daily:2026-01-01"


def test_threshold_crossings_are_exact() -> None:
    thresholds = (50.0, 80.0, 95.0, 100.0)
    assert crossings(DOLLAR, thresholds, to_nanos(0.49), to_nanos(0.50)) == [50.0]
    assert crossings(DOLLAR, thresholds, to_nanos(0.50), to_nanos(0.79)) == []
    assert crossings(DOLLAR, thresholds, to_nanos(0.10), to_nanos(0.96)) == [50.0, 80.0, 95.0]
    assert crossings(DOLLAR, thresholds, to_nanos(0.99), to_nanos(1.20)) == [100.0]
    assert crossings(0, thresholds, 0, 5) == list(thresholds)


# -- in process --------------------------------------------------------------------------


async def test_memory_backend_admits_exactly_what_fits(db: Database) -> None:
    backend = MemoryBackend(db, alerts())
    team = budget(1.0)
    await seed(db, "t", 0.10)
    await seed(db, "t", 5.0, when=datetime.now(UTC) - timedelta(days=2), request_id="old")  # another period
    outcomes = await asyncio.gather(*(reserve(backend, team, request_id=f"r{i}") for i in range(300)))
    admitted = [o for o in outcomes if isinstance(o, Reservation)]
    refused = [o for o in outcomes if isinstance(o, Refusal)]
    assert len(admitted) == 90  # $0.10 spent, $0.90 left, $0.01 each
    assert all(r.scope.kind == "team" and r.spent == to_nanos(0.10) for r in refused)
    for reservation in admitted:
        backend.settle(reservation, to_nanos(0.004))
        backend.settle(reservation, to_nanos(0.004))  # settling twice changes nothing
    state = await backend.snapshot(team, team.window())
    assert state is not None
    assert state["t"].spent == to_nanos(0.10) + 90 * to_nanos(0.004)
    assert state["t"].reserved == 0


async def test_memory_backend_counts_spend_settled_while_it_builds(db: Database) -> None:
    backend = MemoryBackend(db, alerts())
    team = budget(1.0)
    await seed(db, "t", 0.5, request_id="in-ledger")
    # Spend settled before the counters exist waits, and is added unless the ledger has it.
    backend.charge(team, team.scopes_for(None, None), to_nanos(0.2), request_id="not-yet-in-ledger")
    backend.charge(team, team.scopes_for(None, None), to_nanos(0.5), request_id="in-ledger")
    assert isinstance(await reserve(backend, team), Reservation)
    state = await backend.snapshot(team, team.window())
    assert state is not None and state["t"].spent == to_nanos(0.7)


def used_ratio(metrics: BudgetMetrics, team: TeamBudget) -> dict[str, float]:
    """gateway_budget_used_ratio's samples by scope, as a scrape would read them."""
    collector = UsedRatioCollector(metrics, lambda: {team.team: team})
    return {sample.labels["scope"]: sample.value for family in collector.collect() for sample in family.samples}


async def test_the_used_ratio_gauge_in_process(db: Database) -> None:
    team = budget(1.0, keys={"key_a": {"limit_usd": 0.5}})
    alert = alerts()
    backend = MemoryBackend(db, alert)
    assert used_ratio(alert.metrics, team) == {}, "no spend seen this period: nothing reported"
    await seed(db, "t", 0.25)
    reservation = await reserve(backend, team)
    assert isinstance(reservation, Reservation)
    # The rebuild from the ledger reports what it found (the team's shadow scope too: nothing
    # spent on shadow copies); a settle the new total.
    assert used_ratio(alert.metrics, team) == pytest.approx({"team": 0.25, "key:key_a": 0.5, "shadow": 0.0})
    backend.settle(reservation, to_nanos(0.05))
    assert used_ratio(alert.metrics, team) == pytest.approx({"team": 0.30, "key:key_a": 0.6, "shadow": 0.0})
    # Against the policy's current limit, at scrape time.
    raised = budget(2.0, keys={"key_a": {"limit_usd": 0.5}})
    assert used_ratio(alert.metrics, raised)["team"] == pytest.approx(0.15)
    # A refusal reports the spend that refused it.
    for _ in range(20):
        outcome = await reserve(backend, team, amount=to_nanos(0.1))
        if isinstance(outcome, Refusal):
            break
        backend.settle(outcome, to_nanos(0.1))
    assert used_ratio(alert.metrics, team)["key:key_a"] == pytest.approx(1.0)
    # Spend seen in an earlier period is not this period's.
    earlier = team.window(datetime.now(UTC) - timedelta(days=1))
    alert.metrics.saw_spend("t", team.team_scope, earlier, to_nanos(0.9))
    assert "team" not in used_ratio(alert.metrics, team)


async def test_the_used_ratio_gauge_with_redis_is_the_cluster_total_at_each_replicas_last_settle(
    redis_url: str, rclient: redis.Redis, db: Database
) -> None:
    team = budget(1.0)
    await seed(db, "t", 0.25)
    first, second = alerts(), alerts()
    replicas = [redis_backend(redis_url, db, team, alert=first), redis_backend(redis_url, db, team, alert=second)]
    for replica in replicas:
        await replica.start()
    try:
        for replica, spend in zip(replicas, (0.05, 0.10), strict=True):
            reservation = await reserve(replica, team)
            assert isinstance(reservation, Reservation)
            replica.settle(reservation, to_nanos(spend))
            await settled(replica)
        assert used_ratio(first.metrics, team) == pytest.approx({"team": 0.30})
        assert used_ratio(second.metrics, team) == pytest.approx({"team": 0.40})  # max across replicas: the latest
    finally:
        for replica in replicas:
            await replica.close()


# -- Redis -------------------------------------------------------------------------------


async def test_three_replicas_never_admit_past_the_limit(redis_url: str, rclient: redis.Redis, db: Database) -> None:
    team = budget(1.0)
    replicas = [redis_backend(redis_url, db, team) for _ in range(3)]
    for replica in replicas:
        await replica.start()
    try:
        outcomes = await asyncio.gather(
            *(reserve(replicas[i % 3], team, request_id=f"r{i}") for i in range(300))
        )
        admitted = [o for o in outcomes if isinstance(o, Reservation)]
        assert len(admitted) == 100
        assert counters(rclient, "t") == {"s:t": 0, "r:t": 100 * WORST}
        for index, reservation in enumerate(admitted):
            replicas[index % 3].settle(reservation, to_nanos(0.004))
        for replica in replicas:
            await settled(replica)
        assert counters(rclient, "t") == {"s:t": 100 * to_nanos(0.004), "r:t": 0}
        # Room again for (1 - 0.4) / 0.01 = 60 more, not one more.
        more = await asyncio.gather(*(reserve(replicas[i % 3], team, request_id=f"m{i}") for i in range(80)))
        assert sum(isinstance(o, Reservation) for o in more) == 60
        refusal = next(o for o in more if isinstance(o, Refusal))
        assert refusal.spent == to_nanos(0.4) and refusal.reserved == 60 * WORST
    finally:
        for replica in replicas:
            await replica.close()


async def test_sub_budgets_for_keys_and_aliases(redis_url: str, rclient: redis.Redis, db: Database) -> None:
    team = budget(1.0, keys={"key_small": {"limit_usd": 0.02}}, aliases={"priced": {"limit_usd": 0.05}})
    backend = redis_backend(redis_url, db, team)
    await backend.start()
    try:
        assert isinstance(await reserve(backend, team, key_id="key_small", alias="other"), Reservation)
        assert isinstance(await reserve(backend, team, key_id="key_small", alias="other"), Reservation)
        refused = await reserve(backend, team, key_id="key_small", alias="other")
        assert isinstance(refused, Refusal) and refused.scope.label == "key:key_small"
        for _ in range(5):
            assert isinstance(await reserve(backend, team, key_id="key_big", alias="priced"), Reservation)
        refused = await reserve(backend, team, key_id="key_big", alias="priced")
        assert isinstance(refused, Refusal) and refused.scope.label == "alias:priced"
        assert isinstance(await reserve(backend, team, key_id="key_big", alias="other"), Reservation)
        assert counters(rclient, "t")["r:t"] == 8 * WORST
    finally:
        await backend.close()


async def test_soft_budgets_admit_past_the_limit(redis_url: str, rclient: redis.Redis, db: Database) -> None:
    team = budget(0.02, hard=False)
    backend = redis_backend(redis_url, db, team)
    outcomes = [await reserve(backend, team) for _ in range(5)]
    assert all(isinstance(o, Reservation) for o in outcomes)
    assert counters(rclient, "t")["r:t"] == 5 * WORST
    await backend.close()


async def test_counters_are_rebuilt_from_the_ledger_after_a_flush(
    redis_url: str, rclient: redis.Redis, db: Database
) -> None:
    team = budget(1.0)
    backend = redis_backend(redis_url, db, team)
    await backend.start()
    try:
        await seed(db, "t", 0.995, request_id="earlier")
        await seed(db, "t", 9.0, when=datetime.now(UTC) - timedelta(days=1), request_id="yesterday")
        refused = await reserve(backend, team)  # first use: built from the ledger, not from zero
        assert isinstance(refused, Refusal) and refused.spent == to_nanos(0.995)
        assert isinstance(await reserve(backend, team, amount=to_nanos(0.005)), Reservation)
        rclient.flushdb()  # Redis loses everything mid-period
        refused = await reserve(backend, team)
        assert isinstance(refused, Refusal) and refused.spent == to_nanos(0.995)
        # The live reservation was re-created after the rebuild, so it still holds its room.
        assert counters(rclient, "t") == {"s:t": to_nanos(0.995), "r:t": to_nanos(0.005)}
    finally:
        await backend.close()


async def test_spend_settled_around_a_rebuild_is_counted_once(
    redis_url: str, rclient: redis.Redis, db: Database
) -> None:
    team = budget(10.0)
    backend = redis_backend(redis_url, db, team, rebuild_settle_s=0.5)
    await backend.start()
    try:
        await seed(db, "t", 1.0, request_id="before")
        held = await reserve(backend, team, request_id="in-flight")
        assert isinstance(held, Reservation)
        rclient.flushdb()
        # A request finishes while the counters are gone: its settlement is parked, and its
        # ledger row is written at the same moment (as the ledger sink does).
        backend.settle(held, to_nanos(0.5))
        await seed(db, "t", 0.5, request_id="in-flight")
        await settled(backend)
        pending = period_key("t") + ":pending"
        assert rclient.hlen(pending) == 1
        # One settled after the rebuild's horizon (its row is not in the sum): counted from pending.
        future = int((datetime.now(UTC) + timedelta(minutes=1)).timestamp() * 1000)
        rclient.hset(pending, "later", orjson.dumps({"c": str(to_nanos(0.25)), "f": ["t"], "t": future}))
        assert isinstance(await reserve(backend, team), Reservation)
        assert counters(rclient, "t")["s:t"] == to_nanos(1.0 + 0.5 + 0.25)
        assert not rclient.exists(pending)
        # A settlement that was stuck before the horizon (its row is in the sum) is not added
        # again when it finally arrives; one after the horizon is.
        stuck = _Settlement("stuck", team, team.scopes_for(None, None), to_nanos(0.125), "stuck", None,
                            team.window(), int(time.time() * 1000) - 60_000)
        fresh = _Settlement("fresh", team, team.scopes_for(None, None), to_nanos(0.125), "fresh", None,
                            team.window(), int(time.time() * 1000))
        await backend._settle_chunk("t", [stuck, fresh])
        assert counters(rclient, "t")["s:t"] == to_nanos(1.0 + 0.5 + 0.25 + 0.125)
    finally:
        await backend.close()


async def test_a_dead_replicas_reservation_is_charged_and_written_to_the_ledger(
    redis_url: str, rclient: redis.Redis, db: Database
) -> None:
    team = budget(1.0)
    rows = Rows(db)
    dying = redis_backend(redis_url, db, team, reservation_ttl_s=1.0)
    survivor = redis_backend(redis_url, db, team, rows=rows, reservation_ttl_s=1.0)
    await survivor.start()
    held = await reserve(dying, team, request_id="killed-mid-stream", key_id="key_z")
    assert isinstance(held, Reservation)
    await dying._wire.close()  # the process is gone: no heartbeat, no settle
    try:
        for _ in range(100):
            if rows.rows:
                break
            await asyncio.sleep(0.05)
        assert len(rows.rows) == 1
        row = rows.rows[0]
        assert (row["request_id"], row["team"], row["key_id"], row["kind"], row["cost_nanos"]) == (
            "killed-mid-stream", "t", "key_z", "reconciled", WORST
        )
        assert counters(rclient, "t") == {"s:t": WORST, "r:t": 0}
        # A late settle from a replica that was only partitioned charges on top, as its own
        # ledger row will: counters and ledger keep agreeing.
        dying._wire = RedisWire(redis_url, timeout_s=2.0)
        await dying.start()
        dying.settle(held, to_nanos(0.003))
        await settled(dying)
        assert counters(rclient, "t")["s:t"] == WORST + to_nanos(0.003)
        await dying.close()
    finally:
        await survivor.close()


async def test_heartbeats_keep_long_requests_alive(redis_url: str, rclient: redis.Redis, db: Database) -> None:
    team = budget(1.0)
    rows = Rows()
    settings = {"reservation_ttl_s": 1.0, "reconcile_interval_s": 0.1}
    owner = redis_backend(redis_url, db, team, **settings)
    other = redis_backend(redis_url, db, team, rows=rows, **settings)
    await owner.start()
    await other.start()
    try:
        held = await reserve(owner, team)
        assert isinstance(held, Reservation)
        await asyncio.sleep(2.5)  # well past the TTL, but the owner is alive
        assert rows.rows == []
        owner.settle(held, to_nanos(0.002))
        await settled(owner)
        assert counters(rclient, "t") == {"s:t": to_nanos(0.002), "r:t": 0}
    finally:
        await owner.close()
        await other.close()


async def test_a_retried_settlement_is_applied_once(redis_url: str, rclient: redis.Redis, db: Database) -> None:
    team = budget(1.0)
    backend = redis_backend(redis_url, db, team)
    held = await reserve(backend, team)
    assert isinstance(held, Reservation)
    item = _Settlement(held.rid, team, held.scopes, to_nanos(0.004), "r", held.window, team.window(),
                       int(time.time() * 1000))
    await backend._settle_chunk("t", [item])
    item.retry = True  # its reply was lost: the retry must not charge again
    await backend._settle_chunk("t", [item])
    assert counters(rclient, "t") == {"s:t": to_nanos(0.004), "r:t": 0}
    await backend.close()


async def test_unreachable_redis_is_reported_not_guessed(db: Database) -> None:
    team = budget(1.0)
    backend = redis_backend(f"redis://127.0.0.1:{free_port()}/0", db, team)
    with pytest.raises(BudgetUnavailable):
        await reserve(backend, team)
    await backend.close()


@pytest.mark.parametrize("kind", ["memory", "redis"])
async def test_each_threshold_alerts_once_per_period(
    kind: str, redis_url: str, rclient: redis.Redis, db: Database
) -> None:
    hook = WebhookReceiver().start()
    alert = alerts()
    alert.start()
    team = budget(1.0, hard=True, alert_thresholds=[50, 80], webhook_url=hook.url)
    backend: Any = MemoryBackend(db, alert) if kind == "memory" else redis_backend(redis_url, db, team, alert=alert)
    await backend.start()
    try:
        for _ in range(12):  # 12 x $0.09: crosses 50% and 80%, then refused at the limit
            held = await reserve(backend, team, amount=to_nanos(0.09))
            if isinstance(held, Refusal):
                continue
            backend.settle(held, to_nanos(0.09))
            if kind == "redis":
                await settled(backend)
        received = await hook.wait_for(3)
        await asyncio.sleep(0.3)  # and nothing more arrives
        assert sorted(event["threshold_pct"] for event in hook.received) == [50.0, 80.0, 100.0]
        first = next(event for event in received if event["threshold_pct"] == 50.0)
        assert first["team"] == "t" and first["scope"] == "team" and first["limit_usd"] == 1.0
        assert first["spent_usd"] == pytest.approx(0.54) and first["period"] == "daily"
        assert alert.metrics.alerts.labels("t", "team", "80")._value.get() == 1
    finally:
        await backend.close()
        await alert.close()
        hook.stop()


@pytest.mark.parametrize("kind", ["memory", "redis"])
async def test_a_refused_absurd_request_alerts_nobody(
    kind: str, redis_url: str, rclient: redis.Redis, db: Database
) -> None:
    """Alerts follow spend: a request whose worst case alone is past the limit (say ``n`` in
    the billions), refused on a team at 0.001 % of its budget, must not fire the 100 % alert;
    a refusal once spend is near the limit does."""
    alert = alerts()
    team = budget(1.0, hard=True)
    backend: Any = MemoryBackend(db, alert) if kind == "memory" else redis_backend(redis_url, db, team, alert=alert)
    await backend.start()
    exhausted = alert.metrics.alerts.labels("t", "team", "100")
    try:
        held = await reserve(backend, team, amount=to_nanos(0.00001))
        assert isinstance(held, Reservation)
        backend.settle(held, to_nanos(0.00001))
        if kind == "redis":
            await settled(backend)
        assert isinstance(await reserve(backend, team, amount=to_nanos(10**9)), Refusal)
        assert exhausted._value.get() == 0
        held = await reserve(backend, team, amount=to_nanos(0.96))
        assert isinstance(held, Reservation)
        backend.settle(held, to_nanos(0.96))
        if kind == "redis":
            await settled(backend)
        assert isinstance(await reserve(backend, team, amount=to_nanos(0.05)), Refusal)
        assert exhausted._value.get() == 1
    finally:
        await backend.close()


async def test_the_wire_times_out_reconnects_and_reloads_scripts() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(-1)  # accepts commands, never answers

    mute = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = mute.sockets[0].getsockname()[1]
    wire = RedisWire(f"redis://127.0.0.1:{port}/0", timeout_s=0.2)
    with pytest.raises(RedisUnavailable) as caught:
        await wire.call("PING")
    assert caught.value.maybe_applied  # sent, so it may have run: retries must be idempotent
    await wire.close()
    mute.close()

    server = RedisServer().start()
    try:
        wire = RedisWire(server.url, timeout_s=1.0)
        script = Script("answer", "return tonumber(ARGV[1]) + 1")
        replies = await asyncio.gather(*(wire.evalsha(script, [], [i]) for i in range(100)))
        assert replies == [i + 1 for i in range(100)]  # pipelined, each matched to its caller
        server.client().script_flush()
        assert await wire.evalsha(script, [], [41]) == 42  # NOSCRIPT: loaded again
        server.stop()
        with pytest.raises(RedisUnavailable):
            await wire.call("PING")  # written before the close was noticed: may have run
        with pytest.raises(RedisUnavailable) as refused:
            await wire.call("PING")
        assert not refused.value.maybe_applied  # the connection was refused: never sent
        server.start()
        assert await wire.call("PING") == b"PONG"  # reconnected on its own
        await wire.close()
    finally:
        server.stop()


async def test_a_stop_waits_for_the_settlements_already_sent(
    redis_url: str, rclient: redis.Redis, db: Database
) -> None:
    """A graceful stop right after requests finish (a rolling deploy) still applies their spend:
    the batch the settler has taken off the queue and is sending is waited for, not cancelled."""
    team = budget(1.0)
    backend = redis_backend(redis_url, db, team)
    await backend.start()
    held = [await reserve(backend, team, request_id=f"r{n}") for n in range(20)]
    for reservation in held:
        assert isinstance(reservation, Reservation)
        backend.settle(reservation, to_nanos(0.004))
    for _ in range(200):  # until the settler has taken the batch: the queue is empty, the send is not done
        if not backend._queue:
            break
        await asyncio.sleep(0.001)
    await backend.close()
    assert counters(rclient, "t") == {"s:t": 20 * to_nanos(0.004), "r:t": 0}
