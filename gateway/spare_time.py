"""Work that may wait for the event loop's spare time: done while a request waits on its upstream.

At low load a request's post-answer work (the trace span, above all: ~0.1 ms with masking) runs
right after its answer goes out, and a caller that sends its next request at once (a batch job,
an agent's loop, the benchmark's client) finds the loop still busy with it: the work lands on
the next request's latency. Every request also leaves the loop idle while its upstream works
(an LLM takes tens of milliseconds to seconds; the benchmark's fake upstream ~0.1 ms). Work
queued here runs in that gap: the upstream client (``gateway.providers.http1``) calls ``run``
once it has written a request and before it waits for the answer.

A job does a small, bounded piece of work per call (one trace span), so an answer that arrives
meanwhile waits for that piece at most. Jobs must not raise; one that does is logged and the
request goes on. Jobs also keep their own way of getting done when no upstream call comes
(cache hits, an idle gateway): this is where they run first, not the only place.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

log = logging.getLogger("gateway.spare_time")

Job = Callable[[], None]

_jobs: list[Job] = []


def add(job: Job) -> None:
    """Run ``job`` each time a request waits on its upstream (until ``remove``)."""
    _jobs.append(job)


def remove(job: Job) -> None:
    if job in _jobs:
        _jobs.remove(job)


def run() -> None:
    """Run each job once (called while an upstream request is in flight)."""
    for job in _jobs:
        try:
            job()
        except Exception:
            log.exception("spare-time work failed")
