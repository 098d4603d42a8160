"""The rollout controller lease: exactly one replica runs the analysis at a time.

Every replica tries to take or renew the lease every ``lease_s / 3``; whoever holds it runs
the analysis, the others only follow the stored state. The lease lives

- in **Redis** (``redis.url`` set): one key ``gateway:rollouts:lease`` holding
  ``holder|generation`` with a ``lease_s`` expiry, taken and renewed by one Lua script on the
  gateway's own connection (``gateway.redis.wire``); or
- in the **database** (no Redis, e.g. the embedded SQLite default): the ``rollout_lease`` row,
  taken with a conditional UPDATE (held by me, or expired).

When the holder dies its lease expires at most ``lease_s`` after its last renewal, and another
replica, asking every ``lease_s / 3``, holds it at most ``lease_s / 3`` later: a takeover within
two lease periods. The new holder reads the stored state (step, failures, check history) and
carries on; it never repeats or skips a step because every step change is a compare-and-set
on the stored revision.

**Fencing.** Each new holder gets a larger *generation*, and the analysis writes every change
with it (``RolloutStateStore.put(fence=...)``): a write from an older generation is refused.
A holder that stalled (a long GC pause, a frozen VM) past its expiry, and wakes up still
believing it leads, cannot move a rollout after its successor did.

**Failure.** When Redis (or the database) cannot be reached nobody holds the lease and no
rollout moves: weights stay where they are until a controller is back. The database lease's
expiry is written by the holder's clock, so replicas' clocks must agree to well under
``lease_s`` (NTP does); the Redis lease uses Redis' own clock.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Protocol

from sqlalchemy import func, insert, select, update
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from gateway.redis.wire import RedisReplyError, RedisUnavailable, RedisWire, Script
from gateway.storage.schema import rollout_lease, rollout_state

if TYPE_CHECKING:
    from gateway.storage import Database

log = logging.getLogger("gateway.rollouts")

LEASE_NAME = "rollouts"
REDIS_KEY = "gateway:rollouts:lease"

# KEYS: the lease, the generation counter. ARGV: holder, lease in ms, the floor (the largest
# generation the database has seen). Returns the generation held (renewed or newly taken), or 0
# when another holder has it. The floor keeps generations growing when Redis lost the counter
# (a restart without persistence, a flush): else the new holder would be fenced out for good.
_TAKE = Script(
    "rollout-lease-take",
    """
local value = redis.call('GET', KEYS[1])
if value then
  local holder, generation = string.match(value, '^(.*)|(%d+)$')
  if holder == ARGV[1] then
    redis.call('PEXPIRE', KEYS[1], ARGV[2])
    return tonumber(generation)
  end
  return 0
end
local generation = redis.call('INCR', KEYS[2])
local floor = tonumber(ARGV[3])
if generation <= floor then
  generation = floor + 1
  redis.call('SET', KEYS[2], generation)
end
redis.call('SET', KEYS[1], ARGV[1] .. '|' .. generation, 'PX', ARGV[2])
return generation
""",
)

# KEYS: the lease. ARGV: the holder. Deletes it only if this holder has it.
_RELEASE = Script(
    "rollout-lease-release",
    """
local value = redis.call('GET', KEYS[1])
if value and string.match(value, '^(.*)|%d+$') == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
""",
)


class Lease(Protocol):
    holder: str

    async def take(self) -> int:
        """Take or renew the lease: its generation (> 0) while this replica holds it, else 0.
        Never raises: a store that cannot be reached means the lease is not held."""
        ...

    async def release(self) -> None:
        """Give the lease up (a graceful stop), so another replica takes over at once."""
        ...


Floor = Callable[[], Awaitable[int]]


async def _no_floor() -> int:
    return 0


class RedisLease:
    """``floor``: the largest generation already written to the rollouts' state
    (``RolloutStateStore.max_fence``); a new generation is always above it."""

    def __init__(self, wire: RedisWire, holder: str, *, lease_s: float, key: str = REDIS_KEY,
                 floor: Floor = _no_floor) -> None:
        self.holder = holder
        self._wire = wire
        self._ms = max(int(lease_s * 1000), 1)
        self._keys = [key, key + ":generation"]
        self._floor = floor

    async def take(self) -> int:
        try:
            floor = await self._floor()
        except (SQLAlchemyError, OSError) as exc:
            log.warning("rollout lease: the database did not answer; not leading", extra={"error": str(exc)})
            return 0
        try:
            return int(await self._wire.evalsha(_TAKE, self._keys, [self.holder, self._ms, floor]))
        except (RedisUnavailable, RedisReplyError) as exc:
            log.warning("rollout lease: Redis did not answer; not leading", extra={"error": str(exc)})
            return 0

    async def release(self) -> None:
        with contextlib.suppress(RedisUnavailable, RedisReplyError):  # else it expires by itself
            await self._wire.evalsha(_RELEASE, self._keys[:1], [self.holder])
        await self._wire.close()


class DatabaseLease:
    def __init__(self, db: Database, holder: str, *, lease_s: float, name: str = LEASE_NAME) -> None:
        self.holder = holder
        self._db = db
        self._lease = timedelta(seconds=lease_s)
        self._name = name

    async def take(self) -> int:
        try:
            return await self._take()
        except (SQLAlchemyError, OSError) as exc:  # not leading; asked again next time
            log.warning("rollout lease: the database did not answer; not leading", extra={"error": str(exc)})
            return 0

    async def _take(self) -> int:
        now = datetime.now(UTC)
        c = rollout_lease.c
        async with self._db.engine.begin() as conn:
            row = (await conn.execute(select(c.holder, c.generation, c.expires_at).where(c.name == self._name))).first()
            if row is None:
                # Above every generation that ever wrote a rollout (a lease row deleted by hand).
                first = int((await conn.execute(select(func.max(rollout_state.c.fence)))).scalar() or 0) + 1
                try:
                    await conn.execute(
                        insert(rollout_lease).values(
                            name=self._name, holder=self.holder, generation=first, expires_at=now + self._lease
                        )
                    )
                except IntegrityError:
                    return 0  # another replica inserted it first
                return first
            holder, generation, expires_at = row
            expires = expires_at if expires_at.tzinfo else expires_at.replace(tzinfo=UTC)
            mine = holder == self.holder
            if not mine and expires > now:
                return 0
            taken = int(generation) if mine else int(generation) + 1
            # Conditional on what was read: of two replicas taking an expired lease, one wins.
            result = await conn.execute(
                update(rollout_lease)
                .where(c.name == self._name, c.holder == holder, c.generation == generation)
                .values(holder=self.holder, generation=taken, expires_at=now + self._lease)
            )
            return taken if result.rowcount == 1 else 0

    async def release(self) -> None:
        c = rollout_lease.c
        try:
            async with self._db.engine.begin() as conn:
                await conn.execute(
                    update(rollout_lease)
                    .where(c.name == self._name, c.holder == self.holder)
                    .values(expires_at=datetime.now(UTC) - self._lease)
                )
        except (SQLAlchemyError, OSError) as exc:
            log.warning("rollout lease: not released; it expires by itself", extra={"error": str(exc)})
