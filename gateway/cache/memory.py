"""The embedded store: an in-process LRU with per-entry TTL and a memory bound.

Used when no Redis is configured, so a single process gets the same semantics (keys,
scopes, TTLs, purges, single-flight within the process) with nothing to run. It is not
shared between worker processes or replicas; each keeps its own entries.

The bound counts the answer's bytes plus a fixed per-entry overhead; when a new entry would
exceed it, the least recently used entries go first. Expired entries are dropped when read,
and swept every few hundred writes so they do not hold memory until LRU pressure finds them.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Final

from gateway.cache.base import MISSING, Lookup
from gateway.cache.entry import Entry
from gateway.cache.keys import PurgeFilter, parse_key
from gateway.cache.metrics import CacheMetrics

#: Approximate bytes of bookkeeping per entry (dict slot, key string, Entry object).
ENTRY_OVERHEAD: Final = 240
_SWEEP_EVERY: Final = 512


class MemoryStore:
    name = "memory"
    shared = False

    def __init__(
        self,
        max_bytes: int,
        metrics: CacheMetrics | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_bytes = max_bytes
        self._metrics = metrics
        self._clock = clock
        # key -> (entry, expires at on `clock`, accounted size); order is least recently used first.
        self._entries: OrderedDict[str, tuple[Entry, float, int]] = OrderedDict()
        self._bytes = 0
        self._writes = 0
        self.evictions = 0

    @property
    def available(self) -> bool:
        return True

    @property
    def size_bytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._entries)

    async def lookup(self, key: str, lock_token: str, lock_ms: int) -> Lookup:
        entry = self.get(key)
        return MISSING if entry is None else Lookup(entry)

    def get(self, key: str) -> Entry | None:
        slot = self._entries.get(key)
        if slot is None:
            return None
        if slot[1] <= self._clock():
            self._drop(key)
            return None
        self._entries.move_to_end(key)
        return slot[0]

    async def wait_for(self, key: str, timeout_s: float) -> Entry | None:
        return None  # no other process writes here; in-process waiting is the stage's job

    def put(self, key: str, entry: Entry, ttl_ms: int, lock_token: str) -> None:
        if entry.data is not None:
            # A parsed body is many times its JSON: keep bytes only. (Built directly:
            # dataclasses.replace() introspects the fields on every call, several µs.)
            entry = Entry(entry.created, entry.prompt_tokens, entry.completion_tokens, entry.deployment_id, entry.body)
        size = len(entry.body) + len(key) + len(entry.deployment_id) + ENTRY_OVERHEAD
        if size > self.max_bytes:
            return
        if key in self._entries:
            self._drop(key)
        self._entries[key] = (entry, self._clock() + ttl_ms / 1000, size)
        self._bytes += size
        if self._metrics is not None:
            self._metrics.stored(len(entry.body))
        self._writes += 1
        if self._writes % _SWEEP_EVERY == 0:
            self._sweep()
        while self._bytes > self.max_bytes:
            _, (_, _, evicted) = self._entries.popitem(last=False)
            self._bytes -= evicted
            self.evictions += 1
            if self._metrics is not None:
                self._metrics.evictions.inc()
        self._report()

    def release(self, key: str, lock_token: str) -> None:
        return None

    async def purge(self, selection: PurgeFilter) -> int:
        doomed = []
        for key in self._entries:
            parts = parse_key(key)
            if parts is not None and selection.matches(parts):
                doomed.append(key)
        for key in doomed:
            self._drop(key)
        self._report()
        return len(doomed)

    async def stats(self) -> dict[str, Any]:
        return {
            "entries": len(self._entries),
            "bytes": self._bytes,
            "max_bytes": self.max_bytes,
            "evictions": self.evictions,
        }

    async def close(self) -> None:
        self._entries.clear()
        self._bytes = 0

    def _drop(self, key: str) -> None:
        slot = self._entries.pop(key, None)
        if slot is not None:
            self._bytes -= slot[2]

    def _sweep(self) -> None:
        now = self._clock()
        for key in [key for key, slot in self._entries.items() if slot[1] <= now]:
            self._drop(key)

    def _report(self) -> None:
        if self._metrics is not None:
            self._metrics.entries_bytes.set(self._bytes)
