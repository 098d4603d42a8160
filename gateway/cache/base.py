"""The small interface every cache backend implements (Redis, in-process)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any, Protocol

from gateway.cache.entry import Entry
from gateway.cache.keys import PurgeFilter


class LockState(Enum):
    NOT_ASKED = "not_asked"  # no lock was requested, or the entry was found
    ACQUIRED = "acquired"  # this request computes the answer; others wait for it
    HELD_ELSEWHERE = "held_elsewhere"  # another replica is computing it: wait for its value
    FAILED = "failed"  # the backend could not be asked (error, timeout, breaker open)


@dataclass(frozen=True, slots=True)
class Lookup:
    entry: Entry | None
    lock: LockState = LockState.NOT_ASKED


MISSING = Lookup(None)
FAILED = Lookup(None, LockState.FAILED)


class CacheStore(Protocol):
    """A backend. Request-path methods never raise: failures come back as ``FAILED``/None."""

    name: str
    #: Whether other processes share the store (then single-flight needs a lock in it).
    shared: bool

    @property
    def available(self) -> bool:
        """False while the backend is known to be down (requests skip the cache entirely)."""
        ...

    async def lookup(self, key: str, lock_token: str, lock_ms: int) -> Lookup:
        """The entry, or a miss; with a ``lock_token`` a miss also tries to take the key's lock."""
        ...

    async def wait_for(self, key: str, timeout_s: float) -> Entry | None:
        """Wait for another replica's answer; None when it gave up, on timeout, or on error."""
        ...

    def put(self, key: str, entry: Entry, ttl_ms: int, lock_token: str) -> None:
        """Store (possibly in the background) and release the lock if ``lock_token`` holds it."""
        ...

    def release(self, key: str, lock_token: str) -> None:
        """Give up the lock without storing (the answer failed or was not cacheable)."""
        ...

    async def purge(self, selection: PurgeFilter) -> int:
        """Delete matching entries; returns how many. Raises ``CacheUnavailable`` on failure."""
        ...

    async def stats(self) -> dict[str, Any]: ...

    async def close(self) -> None:
        """Finish or drop background work before the connection closes."""
        ...


class CacheUnavailable(Exception):
    """An admin operation (purge) could not reach the backend."""
