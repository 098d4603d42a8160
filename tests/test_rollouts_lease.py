"""The rollout controller lease (Redis and database) and the fencing of state writes."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest

from gateway.redis.wire import RedisWire
from gateway.rollouts.analysis import RolloutAnalyzer
from gateway.rollouts.lease import REDIS_KEY, DatabaseLease, Lease, RedisLease
from gateway.rollouts.state import RolloutState, RolloutStateStore, StateConflict
from gateway.storage import Database, open_database


@pytest.fixture
async def db(fresh_database_url: str) -> AsyncIterator[Database]:
    database = await open_database(fresh_database_url)
    yield database
    await database.close()


async def take_release_expire(first: Lease, second: Lease, lease_s: float) -> None:
    """The rules every lease keeps: one holder; renewals keep it; expiry hands it over with a
    larger generation; a release hands it over at once."""
    generation = await first.take()
    assert generation > 0
    assert await second.take() == 0
    assert await first.take() == generation  # a renewal keeps the generation
    await asyncio.sleep(lease_s * 0.6)
    assert await first.take() == generation  # renewed in time: still the holder
    await asyncio.sleep(lease_s * 0.6)
    assert await second.take() == 0  # the renewal moved the expiry
    await asyncio.sleep(lease_s * 1.2)  # the first stops renewing (dies): the lease expires
    taken = await second.take()
    assert taken == generation + 1
    assert await first.take() == 0  # the old holder does not get it back
    await second.release()
    assert await first.take() == taken + 1


async def test_the_database_lease_has_one_holder_and_hands_over(db: Database) -> None:
    await take_release_expire(DatabaseLease(db, "a", lease_s=0.5), DatabaseLease(db, "b", lease_s=0.5), 0.5)


async def test_two_replicas_racing_for_a_free_database_lease_get_it_once(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'race.db'}"
    databases = [await open_database(url) for _ in range(4)]
    try:
        leases = [DatabaseLease(database, f"r{i}", lease_s=5) for i, database in enumerate(databases)]
        taken = await asyncio.gather(*(lease.take() for lease in leases))
        assert sorted(taken) == [0, 0, 0, 1]
    finally:
        for database in databases:
            await database.close()


@pytest.mark.redis
async def test_the_redis_lease_has_one_holder_and_hands_over(redis_url: str) -> None:
    key = f"{REDIS_KEY}:test-{secrets.token_hex(4)}"
    first = RedisLease(RedisWire(redis_url, timeout_s=1), "a", lease_s=0.5, key=key)
    second = RedisLease(RedisWire(redis_url, timeout_s=1), "b", lease_s=0.5, key=key)
    try:
        await take_release_expire(first, second, 0.5)
    finally:
        await first.release()
        await second.release()


@pytest.mark.redis
async def test_a_redis_that_lost_the_generation_counter_still_hands_out_larger_generations(
    redis_url: str, db: Database
) -> None:
    store = RolloutStateStore(db)
    await store.put(RolloutState("ro", "running"), RolloutState("ro", "running"), fence=7)  # generation 7 wrote
    key = f"{REDIS_KEY}:test-{secrets.token_hex(4)}"
    wire = RedisWire(redis_url, timeout_s=1)
    lease = RedisLease(wire, "a", lease_s=5, key=key, floor=store.max_fence)
    # A fresh (or flushed) Redis: the counter starts again, the floor keeps the generation above 7.
    assert await lease.take() == 8
    await lease.release()
    flushed = RedisWire(redis_url, timeout_s=1)
    await flushed.call("DEL", key + ":generation")
    await flushed.close()
    again = RedisLease(RedisWire(redis_url, timeout_s=1), "b", lease_s=5, key=key, floor=store.max_fence)
    assert await again.take() == 8
    await again.release()


async def test_a_new_database_lease_row_starts_above_every_stored_generation(db: Database) -> None:
    store = RolloutStateStore(db)
    await store.put(RolloutState("ro", "running"), RolloutState("ro", "running"), fence=4)
    assert await DatabaseLease(db, "a", lease_s=5).take() == 5


async def test_a_lease_that_cannot_be_reached_is_not_held() -> None:
    from support.gateway_proc import free_port

    lease = RedisLease(RedisWire(f"redis://127.0.0.1:{free_port()}/0", timeout_s=0.2), "a", lease_s=1)
    assert await lease.take() == 0
    await lease.release()


async def test_a_write_from_an_older_controller_generation_is_refused(db: Database) -> None:
    store = RolloutStateStore(db)
    now = datetime.now(UTC)
    first = await store.put(RolloutState("ro", "running"), RolloutState("ro", "running", started_at=now), fence=1)
    # The successor (generation 2) advances the rollout.
    second = await store.put(first, replace(first, step=1), fence=2)
    assert (second.step, second.fence) == (1, 2)
    # The old controller wakes up, reads the new state and tries to move it: refused.
    with pytest.raises(StateConflict):
        await store.put(second, replace(second, step=2), fence=1)
    # An operator (no fence) is not a controller: its changes keep the stored generation.
    paused = await store.put(second, replace(second, status="paused"))
    assert paused.fence == 2
    stored = await store.get("ro")
    assert stored is not None and (stored.step, stored.status, stored.fence) == (1, "paused", 2)


class CountingLease:
    def __init__(self, holder: str, answers: list[int]) -> None:
        self.holder = holder
        self.answers = answers
        self.released = False

    async def take(self) -> int:
        return self.answers.pop(0) if self.answers else 0

    async def release(self) -> None:
        self.released = True


class NoViews:
    def __init__(self) -> None:
        self.ticks = 0

    async def views(self) -> list[object]:
        self.ticks += 1
        return []


async def test_only_the_holder_leads_and_each_new_generation_is_noted() -> None:
    def analyzer(lease_s: float, led: list[tuple[str, int]]) -> RolloutAnalyzer:
        async def on_lead(holder: str, generation: int) -> None:
            led.append((holder, generation))

        return RolloutAnalyzer(
            NoViews(),
            lambda: None,
            None,  # type: ignore[arg-type]
            lease=CountingLease("me", [0, 3, 3, 0, 5]),
            lease_s=lease_s,
            on_lead=on_lead,
        )

    led: list[tuple[str, int]] = []
    trusting = analyzer(60.0, led)
    results = []
    for _ in range(5):
        trusting._asked_at = float("-inf")  # ask every time (the loop asks every third of the lease)
        results.append((await trusting.lead(), trusting.generation))
    assert results == [(False, 0), (True, 3), (True, 3), (False, 0), (True, 5)]
    assert led == [("me", 3), ("me", 5)]
    # A lease that has run out by the time the answer came is not acted on (a stalled holder).
    stale = analyzer(0.0, [])
    assert [await stale.lead() for _ in range(5)] == [False] * 5
