"""The Redis store: shared by every replica, fail-open, one round trip per lookup.

A lookup is one Lua script: it returns the entry, or on a miss takes the key's short
single-flight lock (``SET NX PX``) in the same round trip, so the first replica to miss
computes the answer and the others wait for its value. Writes (value plus lock release,
again one script) run in the background after the answer has gone out.

Every operation is bounded by ``redis.op_timeout_ms``; a failure or timeout makes the
request go on as if the cache were off, and counts towards the circuit breaker. redis-py's
exceptions are translated here and nowhere else.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any, Final

from redis.asyncio import Redis
from redis.exceptions import RedisError, ResponseError

from gateway.cache.base import FAILED, MISSING, CacheUnavailable, LockState, Lookup
from gateway.cache.breaker import CircuitBreaker
from gateway.cache.entry import Entry, decode_entry, encode_entry
from gateway.cache.keys import PurgeFilter, lock_key, parse_key
from gateway.cache.metrics import CacheMetrics

log = logging.getLogger("gateway.cache")

# KEYS: entry, lock. ARGV: lock token ("" = do not lock), lock ttl ms.
# Returns {1, value} on a hit, {0} on a miss without locking, {2} lock taken, {3} lock held by another.
_LOOKUP: Final = """
local value = redis.call('GET', KEYS[1])
if value then return {1, value} end
if ARGV[1] == '' then return {0} end
if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then return {2} end
return {3}
"""
# KEYS: entry, lock. ARGV: value, ttl ms, lock token. Releases the lock only if still ours.
_STORE: Final = """
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
if ARGV[3] ~= '' and redis.call('GET', KEYS[2]) == ARGV[3] then redis.call('DEL', KEYS[2]) end
return 1
"""
_RELEASE: Final = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
_LOCK_STATES: Final = {0: LockState.NOT_ASKED, 2: LockState.ACQUIRED, 3: LockState.HELD_ELSEWHERE}
# What a dead, slow or restarting Redis raises through redis-py (and asyncio's timeout).
_DOWN: Final = (RedisError, OSError, EOFError, TimeoutError)
_POLL_FIRST_S: Final = 0.002
_POLL_MAX_S: Final = 0.05
_PURGE_BATCH: Final = 500


class RedisStore:
    name = "redis"
    shared = True

    def __init__(
        self,
        redis: Redis,
        metrics: CacheMetrics,
        *,
        op_timeout_s: float,
        compress_min: int,
        max_pending: int,
        breaker_failures: int,
        breaker_retry_s: float,
    ) -> None:
        self._redis = redis
        self._metrics = metrics
        self._timeout = op_timeout_s
        self._compress_min = compress_min
        self._max_pending = max_pending
        self._lookup = redis.register_script(_LOOKUP)
        self._store = redis.register_script(_STORE)
        self._release = redis.register_script(_RELEASE)
        self._pending: set[asyncio.Task[None]] = set()
        self.breaker = CircuitBreaker(
            "cache Redis",
            failures=breaker_failures,
            retry_s=breaker_retry_s,
            probe=self._probe,
            on_change=metrics.breaker,
        )

    @property
    def available(self) -> bool:
        return self.breaker.closed

    async def lookup(self, key: str, lock_token: str, lock_ms: int) -> Lookup:
        if not self.breaker.closed:
            return FAILED
        try:
            async with asyncio.timeout(self._timeout):
                reply = await self._lookup(keys=(key, lock_key(key)), args=(lock_token, lock_ms))
        except _DOWN as exc:
            self._failed("lookup", exc)
            return FAILED
        self.breaker.success()
        if reply[0] == 1:
            entry = self._decode(reply[1])
            return MISSING if entry is None else Lookup(entry)
        return Lookup(None, _LOCK_STATES.get(reply[0], LockState.NOT_ASKED))

    async def wait_for(self, key: str, timeout_s: float) -> Entry | None:
        """Poll for another replica's answer, backing off from 2 ms to 50 ms between reads."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        delay = _POLL_FIRST_S
        keys = (key, lock_key(key))
        while loop.time() + delay < deadline:
            await asyncio.sleep(delay)
            if not self.breaker.closed:
                return None
            try:
                async with asyncio.timeout(self._timeout):
                    value, lock = await self._redis.mget(keys)
            except _DOWN as exc:
                self._failed("wait", exc)
                return None
            self.breaker.success()
            if value is not None:
                return self._decode(value)
            if lock is None:
                return None  # the other replica gave up (error, uncacheable answer)
            delay = min(delay * 2, _POLL_MAX_S)
        return None

    def put(self, key: str, entry: Entry, ttl_ms: int, lock_token: str) -> None:
        self._background("store", self._write(key, entry, ttl_ms, lock_token))

    def release(self, key: str, lock_token: str) -> None:
        if lock_token:
            self._background("release", self._unlock(key, lock_token))

    async def purge(self, selection: PurgeFilter) -> int:
        return await purge_keys(self._redis, selection)

    async def stats(self) -> dict[str, Any]:
        return {
            "breaker": "closed" if self.breaker.closed else "open",
            "pending_writes": len(self._pending),
        }

    async def close(self) -> None:
        if self._pending:
            await asyncio.wait(list(self._pending), timeout=2.0)
        await self.breaker.close()

    # -- internals ---------------------------------------------------------------------------

    def _background(self, op: str, work: Coroutine[Any, Any, None]) -> None:
        if not self.breaker.closed or len(self._pending) >= self._max_pending:
            work.close()  # never started: a dead Redis or a full queue drops the write
            if self.breaker.closed:
                self._metrics.error(op)
            return
        task = asyncio.get_running_loop().create_task(work)
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _write(self, key: str, entry: Entry, ttl_ms: int, lock_token: str) -> None:
        value = encode_entry(entry, self._compress_min)  # here, not on the request path
        try:
            async with asyncio.timeout(self._timeout):
                await self._store(keys=(key, lock_key(key)), args=(value, ttl_ms, lock_token))
        except ResponseError as exc:
            # Redis is up but refused (e.g. maxmemory with noeviction): not a reason to open.
            self._metrics.error("store")
            log.debug("cache write refused: %s", exc)
            return
        except _DOWN as exc:
            self._failed("store", exc)
            return
        self.breaker.success()
        self._metrics.stored(len(value))

    async def _unlock(self, key: str, lock_token: str) -> None:
        try:
            async with asyncio.timeout(self._timeout):
                await self._release(keys=(lock_key(key),), args=(lock_token,))
        except _DOWN as exc:
            self._failed("release", exc)  # the lock expires on its own
            return
        self.breaker.success()

    async def _probe(self) -> bool:
        try:
            async with asyncio.timeout(max(self._timeout, 0.25)):
                await self._redis.ping()
                # Pooled connections from before the outage are dead: drop the idle ones
                # so the first requests after recovery do not trip over them.
                await self._redis.connection_pool.disconnect(inuse_connections=False)
        except _DOWN:
            self._metrics.error("probe")
            return False
        return True

    def _failed(self, op: str, exc: BaseException) -> None:
        self._metrics.error(op)
        if isinstance(exc, ResponseError):
            log.debug("cache %s refused by Redis: %s", op, exc)
            return
        self.breaker.failure(type(exc).__name__)

    def _decode(self, raw: bytes | str) -> Entry | None:
        try:
            if not isinstance(raw, bytes):  # a client with decode_responses=True: not our value
                raise ValueError("cache value decoded as text")
            return decode_entry(raw)
        except ValueError:
            self._metrics.error("lookup")
            return None


async def purge_keys(redis: Redis, selection: PurgeFilter) -> int:
    """SCAN for the selection's key patterns, check each key exactly, UNLINK in batches.

    Raises ``CacheUnavailable`` if Redis fails; entries already unlinked stay unlinked.
    """
    removed = 0
    try:
        for pattern in selection.patterns():
            batch: list[bytes] = []
            async for raw in redis.scan_iter(match=pattern, count=1000):
                parts = parse_key(raw.decode(errors="replace"))
                if parts is not None and selection.matches(parts):
                    batch.append(raw)
                if len(batch) >= _PURGE_BATCH:
                    removed += await redis.unlink(*batch)
                    batch = []
            if batch:
                removed += await redis.unlink(*batch)
    except _DOWN as exc:
        raise CacheUnavailable(f"Redis did not answer the purge ({type(exc).__name__}).") from None
    return removed
