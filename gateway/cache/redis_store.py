"""The Redis store: shared by every replica, fail-open, one round trip per lookup.

A lookup is one Lua script: it returns the entry, or on a miss takes the key's short
single-flight lock (``SET NX PX``) in the same round trip, so the first replica to miss
computes the answer and the others wait for its value. Writes (value plus lock release,
again one script) are queued for the next event-loop iteration, so the answer has gone out
before they are encoded and sent, and nothing waits for their reply: a callback counts the
outcome (metrics, breaker). At most ``cache.max_pending_writes`` are queued or in flight.

The request-path operations (lookup, the single-flight poll, store, lock release) go over the
store's own :class:`~gateway.redis.wire.RedisWire`: one pipelined connection at ~20 µs of CPU
per command, where redis-py's pooled asyncio client costs ~150-300 µs, more than the whole
rest of a cache hit. Purges (SCAN over the keyspace, rare, admin-only) use the process's shared
off-path connection (``gateway.redis.conn``), so they never queue behind or delay lookups.

Every request-path operation waits at most ``redis.op_timeout_ms`` for its reply, and at most
as long again if it has to wait for a connection to be (re)opened; a failure or timeout makes
the request go on as if the cache were off, and counts towards the circuit breaker. Redis
errors are translated here and nowhere else.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from typing import Any, Final

from gateway.cache.base import FAILED, MISSING, CacheUnavailable, LockState, Lookup
from gateway.cache.breaker import CircuitBreaker
from gateway.cache.entry import Entry, decode_entry, encode_entry
from gateway.cache.keys import PurgeFilter, lock_key, parse_key
from gateway.cache.metrics import CacheMetrics
from gateway.redis.wire import Arg, RedisReplyError, RedisUnavailable, RedisWire, Script

log = logging.getLogger("gateway.cache")

# KEYS: entry, lock. ARGV: lock token ("" = do not lock), lock ttl ms.
# Returns the value on a hit, 0 on a miss without locking, 2 lock taken, 3 lock held by another.
# A hit is a bare bulk reply (not an array): the reply parser builds one bytes object and no list.
_LOOKUP: Final = Script("cache-lookup", """
local value = redis.call('GET', KEYS[1])
if value then return value end
if ARGV[1] == '' then return 0 end
if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then return 2 end
return 3
""")
# KEYS: entry, lock. ARGV: value, ttl ms, lock token. Releases the lock only if still ours.
_STORE: Final = Script("cache-store", """
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
if ARGV[3] ~= '' and redis.call('GET', KEYS[2]) == ARGV[3] then redis.call('DEL', KEYS[2]) end
return 1
""")
_RELEASE: Final = Script("cache-release", """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
""")
_ACQUIRED: Final = Lookup(None, LockState.ACQUIRED)
_HELD_ELSEWHERE: Final = Lookup(None, LockState.HELD_ELSEWHERE)
_LOCK_STATES: Final = {0: MISSING, 2: _ACQUIRED, 3: _HELD_ELSEWHERE}
# What a dead, slow or restarting Redis raises on the shared connection (purges only).
_DOWN: Final = (RedisUnavailable, RedisReplyError)
_CONNECT_S: Final = 0.25  # least time a connection attempt gets (as the shared client's)
_POLL_FIRST_S: Final = 0.002
_POLL_MAX_S: Final = 0.05
_PURGE_BATCH: Final = 500


class RedisStore:
    """The cache's Redis backend.

    ``url`` is ``redis.url``: the store opens its own wire connection to it (deadline
    ``op_timeout_s``). ``admin`` is the process's shared off-path connection, used for purges.
    """

    name = "redis"
    shared = True

    def __init__(
        self,
        url: str,
        metrics: CacheMetrics,
        *,
        admin: RedisWire,
        op_timeout_s: float,
        compress_min: int,
        max_pending: int,
        breaker_failures: int,
        breaker_retry_s: float,
    ) -> None:
        # A request waits for a (re)connection no longer than for a reply; the attempt itself
        # may take longer (a TLS handshake to a distant Redis), for the requests that follow.
        self._wire = RedisWire(
            url, timeout_s=op_timeout_s, connect_timeout_s=max(op_timeout_s, _CONNECT_S), connect_wait_s=op_timeout_s
        )
        self._admin = admin
        self._metrics = metrics
        self._compress_min = compress_min
        self._max_pending = max_pending
        self._pending: set[asyncio.Future[Any]] = set()  # writes sent, reply not in yet
        self._queued = 0  # writes waiting for the next loop iteration to be sent
        self._event_loop: asyncio.AbstractEventLoop | None = None
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
        breaker = self.breaker
        if not breaker.closed:
            return FAILED
        try:
            reply = await self._wire.evalsha(_LOOKUP, [key, lock_key(key)], [lock_token, lock_ms])
        except (RedisUnavailable, RedisReplyError) as exc:
            self._failed("lookup", exc)
            return FAILED
        breaker.success()
        if type(reply) is bytes:
            entry = self._decode(reply)
            return MISSING if entry is None else Lookup(entry)
        return _LOCK_STATES.get(reply, MISSING)

    async def wait_for(self, key: str, timeout_s: float) -> Entry | None:
        """Poll for another replica's answer, backing off from 2 ms to 50 ms between reads."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        delay = _POLL_FIRST_S
        lock = lock_key(key)
        while loop.time() + delay < deadline:
            await asyncio.sleep(delay)
            if not self.breaker.closed:
                return None
            try:
                value, holder = await self._wire.call("MGET", key, lock)
            except (RedisUnavailable, RedisReplyError) as exc:
                self._failed("wait", exc)
                return None
            self.breaker.success()
            if value is not None:
                return self._decode(value)
            if holder is None:
                return None  # the other replica gave up (error, uncacheable answer)
            delay = min(delay * 2, _POLL_MAX_S)
        return None

    def put(self, key: str, entry: Entry, ttl_ms: int, lock_token: str) -> None:
        if self._admit("store"):
            # Next loop iteration: after the answer has been written out, encode and send.
            self._loop().call_soon(self._write, key, entry, ttl_ms, lock_token)

    def release(self, key: str, lock_token: str) -> None:
        if lock_token and self._admit("release"):
            self._loop().call_soon(self._unlock, key, lock_token)

    async def purge(self, selection: PurgeFilter) -> int:
        return await purge_keys(self._admin, selection)

    async def stats(self) -> dict[str, Any]:
        return {
            "breaker": "closed" if self.breaker.closed else "open",
            "pending_writes": self._queued + len(self._pending),
        }

    async def close(self) -> None:
        await asyncio.sleep(0)  # writes queued with call_soon start first
        if self._pending:
            await asyncio.wait(list(self._pending), timeout=2.0)
        await self.breaker.close()
        await self._wire.close()

    # -- internals ---------------------------------------------------------------------------

    def _loop(self) -> asyncio.AbstractEventLoop:
        loop = self._event_loop
        if loop is None:
            loop = self._event_loop = asyncio.get_running_loop()
        return loop

    def _admit(self, op: str) -> bool:
        """Whether a background write may be queued: not while the breaker is open (dropped
        silently: the outage is already counted) nor beyond ``max_pending`` (counted)."""
        if not self.breaker.closed:
            return False
        if self._queued + len(self._pending) >= self._max_pending:
            self._metrics.error(op)
            return False
        self._queued += 1
        return True

    def _write(self, key: str, entry: Entry, ttl_ms: int, lock_token: str) -> None:
        self._queued -= 1
        value = encode_entry(entry, self._compress_min)  # here, not on the request path
        self._send(_STORE, [key, lock_key(key)], [value, ttl_ms, lock_token], "store", len(value))

    def _unlock(self, key: str, lock_token: str) -> None:
        self._queued -= 1
        self._send(_RELEASE, [lock_key(key)], [lock_token], "release", 0)  # on failure it expires

    def _send(self, script: Script, keys: list[str], args: list[Arg], op: str, stored: int) -> None:
        """Send a write nobody waits for; its outcome feeds the breaker and the metrics."""
        if not self.breaker.closed:
            return  # opened since the write was queued
        # later: nobody waits for it; it leaves with the next lookup (or within the wire's HOLD_S).
        future = self._wire.evalsha_soon(script, keys, args, later=True)
        self._pending.add(future)
        future.add_done_callback(functools.partial(self._sent, op, stored))

    def _sent(self, op: str, stored: int, future: asyncio.Future[Any]) -> None:
        self._pending.discard(future)
        if future.cancelled():
            return
        error = future.exception()
        if error is None:
            self.breaker.success()
            if stored:
                self._metrics.stored(stored)
        elif isinstance(error, RedisUnavailable | RedisReplyError):
            self._failed(op, error)
        else:  # a bug, not an outage: say so instead of losing it
            log.error("cache %s failed", op, exc_info=error)

    async def _probe(self) -> bool:
        """The breaker's background check; a dead connection was dropped when it failed."""
        try:
            await self._wire.connect()  # no request waits on it: give the connect all its time
            await self._wire.call("PING")
        except (RedisUnavailable, RedisReplyError):
            self._metrics.error("probe")
            return False
        return True

    def _failed(self, op: str, exc: RedisUnavailable | RedisReplyError) -> None:
        self._metrics.error(op)
        if isinstance(exc, RedisReplyError):
            # Redis is up but refused (e.g. maxmemory with noeviction): not a reason to open.
            log.debug("cache %s refused by Redis: %s", op, exc)
            return
        self.breaker.failure(str(exc))

    def _decode(self, raw: bytes) -> Entry | None:
        try:
            return decode_entry(raw)
        except ValueError:
            self._metrics.error("lookup")
            return None


async def purge_keys(redis: RedisWire, selection: PurgeFilter) -> int:
    """SCAN for the selection's key patterns, check each key exactly, UNLINK in batches.

    Raises ``CacheUnavailable`` if Redis fails; entries already unlinked stay unlinked.
    """
    removed = 0
    try:
        for pattern in selection.patterns():
            batch: list[bytes] = []
            cursor = b"0"
            while True:
                cursor, keys = await redis.call(b"SCAN", cursor, b"MATCH", pattern, b"COUNT", 1000)
                for raw in keys:
                    parts = parse_key(raw.decode(errors="replace"))
                    if parts is not None and selection.matches(parts):
                        batch.append(raw)
                    if len(batch) >= _PURGE_BATCH:
                        removed += await redis.call(b"UNLINK", *batch)
                        batch = []
                if cursor == b"0":
                    break
            if batch:
                removed += await redis.call(b"UNLINK", *batch)
    except _DOWN as exc:
        raise CacheUnavailable(f"Redis did not answer the purge ({type(exc).__name__}).") from None
    return removed
