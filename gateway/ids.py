"""Random identifiers made on every request: request ids, trace ids, budget reservation ids.

They must be unique, not secret: a request id is echoed to the caller, a trace id travels in
``traceparent`` headers, a reservation id names a Redis field for a few seconds. So they come
from a Mersenne Twister seeded from the OS, as the OpenTelemetry SDK makes its trace and span
ids, not from ``os.urandom``: that is a system call (getrandom) per id, ~0.4 µs each on an idle
machine and more under load, two or three times a request. Nothing that guards access (keys,
session tokens, signing keys) is made here; those still use ``secrets``.

The generator is this module's own, not ``random``'s shared one, so a library or test that
calls ``random.seed(...)`` cannot make two processes repeat each other's ids, and it is
reseeded from the OS in every forked child (each worker draws its own ids).
"""

from __future__ import annotations

import os
import random

_generator = random.Random()
os.register_at_fork(after_in_child=_generator.seed)
_bits = _generator.getrandbits


def hex128() -> str:
    """32 lowercase hex digits: 128 random bits (a request or trace id)."""
    return f"{_bits(128):032x}"


def hex64() -> str:
    """16 lowercase hex digits: 64 random bits."""
    return f"{_bits(64):016x}"
