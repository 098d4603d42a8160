"""The request path, assembled in one place so its order can be read top to bottom.

    1 record → 2 authenticate → 3 parse → 4 resolve → 5 route → 6 [cache] → 7 [usage]
    → 8 [budget] → 9 call upstream                        (``Runtime.build`` lists them)

Each stage is the ``stage.py`` of its own package (``gateway/<package>/stage.py``) and imports
no other stage's package. Nobody calls the assembled pipeline directly: the core handler
(``gateway.core``) runs it, for ``/v1``, evaluations and shadow copies alike.

Every stage has the same shape, ``async (ctx, call_next) -> Reply``; a stage may answer
without calling the next (a cache hit, a rejection) or wrap it (spend is reserved before
and committed after). Optional stages are left out when their feature is off, which costs
nothing per request. A later stage's first step may be begun by an earlier one while it waits
(``ctx.head_start``: the budget's reservation, sent beside the cache lookup when both wait
on Redis; ``Runtime.build`` wires it, and the earlier stage releases what nobody took).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

from gateway.pipeline_types import Handler, Stage


def build_pipeline(stages: Sequence[Stage], terminal: Handler) -> Handler:
    handler = terminal
    for stage in reversed(stages):
        handler = functools.partial(stage.__call__, call_next=handler)
    return handler
