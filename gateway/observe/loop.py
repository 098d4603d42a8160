"""How late the event loop runs, and how long the garbage collector stops it.

Every request of a process waits while its event loop is held: by a callback that ran too long,
by a garbage collection (it holds the GIL, whichever thread set it off), or by a thread that
held the GIL and was not given the CPU to hand it back. None of that shows in a request's own
timings until it is the tail. So:

* ``gateway_event_loop_lag_seconds``: every ``interval_s`` a timer notes how late the loop ran
  it. A lag of 0.1 s or more is also logged, at most every 10 s, with the longest collection
  since the last tick (a stall with no collection behind it was something else).
* ``gateway_gc_pause_seconds{generation}``: each collection's wall time, from ``gc.callbacks``.
  The callback only notes the time; the loop's next tick puts it in the histogram, so the
  callback takes no lock (a collection can start inside any allocation, a metric's included).

Cost: one timer callback every 0.25 s, and two calls per collection (a young one every ~10,000
net allocations, ``gateway.heap``); nothing per request.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections import deque
from typing import Any

from prometheus_client import CollectorRegistry, Histogram

from gateway.throttled_log import ThrottledLog

log = logging.getLogger("gateway.loop")

LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
#: A lag worth a log line: every request of that moment waited this long.
WARN_LAG_S = 0.1
_WARN_EVERY_S = 10.0
#: Collections noted between two ticks at most (young ones come tens a second under load).
_MAX_NOTED = 4096


class LoopWatch:
    """Samples the running loop's lag and times garbage collections. ``start`` inside the loop."""

    def __init__(self, registry: CollectorRegistry, *, interval_s: float = 0.25) -> None:
        self.lag = Histogram(
            "gateway_event_loop_lag_seconds",
            "How late the event loop ran a timer due every 0.25 s: what every request of that moment waited.",
            buckets=LAG_BUCKETS, registry=registry,
        )
        self.gc_pause = Histogram(
            "gateway_gc_pause_seconds", "Wall time of each garbage collection, by generation (the loop waits).",
            ("generation",), buckets=LAG_BUCKETS, registry=registry,
        )
        self._pause_by_generation = [self.gc_pause.labels(str(generation)) for generation in range(3)]
        self._interval_s = interval_s
        self._warning = ThrottledLog(log, every_s=_WARN_EVERY_S)
        self._noted: deque[tuple[int, float]] = deque(maxlen=_MAX_NOTED)
        self._gc_started = 0.0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._handle: asyncio.TimerHandle | None = None
        self._due = 0.0

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        gc.callbacks.append(self._on_gc)
        self._schedule(self._loop.time())

    async def close(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        if self._on_gc in gc.callbacks:
            gc.callbacks.remove(self._on_gc)
        self._flush_pauses()

    def _schedule(self, now: float) -> None:
        assert self._loop is not None
        self._due = now + self._interval_s
        self._handle = self._loop.call_at(self._due, self._tick)

    def _tick(self) -> None:
        assert self._loop is not None
        now = self._loop.time()
        late = max(0.0, now - self._due)
        self.lag.observe(late)
        longest_gc = self._flush_pauses()
        if late >= WARN_LAG_S:
            self._warning.log(
                "the event loop ran late",
                late_ms=round(late * 1000, 1), longest_gc_ms=round(longest_gc * 1000, 1),
            )
        self._schedule(now)

    def _flush_pauses(self) -> float:
        """Put the collections noted since the last tick in the histogram; the longest one."""
        longest = 0.0
        noted = self._noted
        while noted:
            generation, seconds = noted.popleft()
            self._pause_by_generation[generation].observe(seconds)
            longest = max(longest, seconds)
        return longest

    def _on_gc(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._gc_started = time.perf_counter()
        else:
            self._noted.append((info["generation"], time.perf_counter() - self._gc_started))
