"""A log line at a bounded rate, for events that can come on every request or every retry.

Here rather than in ``gateway.observe`` (the logging set-up) because stages use it, and a stage
imports no other stage's package (``tests/gateway/test_layout.py``).
"""

from __future__ import annotations

import logging
import time
from typing import Any


class ThrottledLog:
    """Log at most one line every ``every_s``, saying how many events it stands for.

    For what can happen on every request or every retry (a full queue, a dead Langfuse, an
    unreachable Redis): one line per interval instead of a flood, with ``count`` the events
    since the last line (the metrics keep the exact numbers). Events held back between lines
    are counted, not kept: the next line carries its own message and fields.
    """

    def __init__(self, logger: logging.Logger, *, every_s: float, level: int = logging.WARNING) -> None:
        self._logger = logger
        self._every_s = every_s
        self._level = level
        self._last = float("-inf")
        self._held = 0

    def log(self, message: str, *args: object, count: int = 1, **extra: Any) -> None:
        self._held += count
        now = time.monotonic()
        if now - self._last < self._every_s:
            return
        self._logger.log(self._level, message, *args, extra={"count": self._held, **extra})
        self._last = now
        self._held = 0
