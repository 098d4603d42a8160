"""The garbage collector's settings for a long-running server, in one place.

What start-up builds (modules, config, the catalog, the pipeline) lives as long as the process,
and so does what later one-off work builds: the admin app on the first admin request, litellm
on the first non-OpenAI deployment. Left in the collector's generations, a full collection walks
all of it with the event loop stopped: over litellm's ~380,000 objects one took ~0.2 s, and
every request waited. Frozen (``gc.freeze``), it is in the permanent generation, which no
collection walks.
"""

from __future__ import annotations

import functools
import gc
import os
from typing import Any


def freeze_long_lived() -> None:
    """Move every object the collector tracks now out of its generations, for good.

    Called right after building something that lives as long as the process. Objects of
    requests in flight at that moment are frozen too; they are freed by reference counting as
    ever, only a reference cycle among them would never be (requests leave none, ``core._failed``).
    """
    gc.freeze()


def settle(young_threshold: int) -> None:
    """Tune the collector for serving, once start-up is done.

    Start-up's heap is frozen (``freeze_long_lived``), so a full collection under load walks
    only what requests allocate, not the whole start-up heap (no pauses of tens of milliseconds
    in the latency tail).

    The young generation's threshold goes from Python's 700 (net allocations between two
    collections) to ``young_threshold``. Requests leave no reference cycles (a failed one's
    error drops its traceback, ``core._failed``), so under load a young collection finds
    nothing to free, yet it walks every object of the requests in flight: at concurrency 64,
    ~300 of them a second cost ~5 % of the CPU, ~45 µs a request (``gc.callbacks``, the full
    benchmark profile). At 10,000 they are rare, each ~5 ms, and garbage that does come (from
    libraries' error paths) is still collected young.
    """
    gc.collect()
    freeze_long_lived()
    gc.set_threshold(young_threshold, *gc.get_threshold()[1:])


@functools.cache
def import_litellm() -> Any:
    """litellm, imported once (seconds; callers run it on a worker thread or at start-up) and frozen.

    litellm fetches a remote price map at import unless told otherwise; the gateway must start
    offline, and it reads the bundled map itself (``gateway.pricing``).
    """
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    import litellm
    import litellm.utils

    freeze_long_lived()
    return litellm
