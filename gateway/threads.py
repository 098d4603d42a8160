"""Background threads that must neither take the CPU from the event loop nor hold it up.

The gateway's own background threads (the ledger's SQLite writer, the log writer) run as
``SCHED_BATCH`` on Linux, at the process's own ``nice``. (Trace batches were POSTed from such a
thread until December 2026; they now leave from the loop, see ``gateway.tracing.sender``.)

* **Why not at normal scheduling.** The scheduler favours a thread that slept over a running
  one: the background thread, woken for a batch, preempted the event loop a request had just
  woken, and the whole write landed on that request's latency. Measured with the ledger's SQLite
  writer at concurrency 1 (gateway p99, ms): normal 1.71, no ledger at all 0.80. A ``SCHED_BATCH``
  thread never preempts on waking; it runs when a core is free, or at its next turn.
* **Why not a higher ``nice``** (these threads ran at 10 and 19 until December 2026). A thread
  running Python holds the GIL. At nice 19 it gets ~1.5 % of a contended core, so when the
  scheduler takes the core from it while it holds the GIL (in the middle of converting a batch,
  or of a garbage collection its allocation set off), the event loop waits for the GIL until the
  starved thread runs again: a priority inversion. On a loaded 2-core CI machine a collection
  running in such a thread took 0.5-1.7 s of wall time, and ``/health/live`` stalled 0.66 s
  (``tests/test_hostile_input.py``). A batch thread has the loop's weight: when it holds the GIL
  it gets the core back within the scheduler's usual slice. Measured (``benchmarks/README.md``,
  eighth session; the core profile at concurrency 1, interleaved): with two busy processes on the
  machine's 2 cores the gateway's p99 was 98 ms with the ``nice``d threads and 7.1 ms with batch
  ones; on an otherwise idle machine batch threads cost the p99 ~0.1 ms (2.73 against 2.62 ms).

Subprocesses (the scoring worker) share no GIL, and keep a higher ``nice``.
"""

from __future__ import annotations

import contextlib
import os


def run_as_background() -> None:
    """Schedule the calling thread as background work (Linux's ``SCHED_BATCH``; elsewhere a no-op).

    Per thread: ``sched_setscheduler(0, ...)`` sets the calling thread's policy. Moving to
    ``SCHED_BATCH`` needs no privilege.
    """
    with contextlib.suppress(OSError, AttributeError):
        os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))
