"""Background threads that must never win the CPU from the event loop serving requests."""

from __future__ import annotations

import contextlib
import os
import threading

#: ``nice`` of a polite background thread (the lowest priority). At the loop's own priority the
#: scheduler favours a thread that slept (the background one) over the loop a request has just
#: woken, so background work landed, whole, on that request's latency; at 19 the loop preempts
#: it at once. Measured with the ledger's SQLite writer at concurrency 1 (gateway p99, ms):
#: nice 0 1.71, nice 10 1.26, nice 19 0.75, no ledger at all 0.80.
POLITE_NICE = 19


def lower_priority(nice: int = POLITE_NICE) -> None:
    """Run the calling thread at ``nice`` (Linux sets priorities per thread; elsewhere a no-op).

    Raising one's own nice value needs no privilege. A thread at 19 still gets ~1.5 % of a
    saturated core, so work that must keep up under full load needs a way back to normal
    priority (see ``gateway.storage.bulk``).
    """
    if nice:
        with contextlib.suppress(OSError, AttributeError):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice)
