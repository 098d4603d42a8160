"""A deterministic draw in [0, 1) per (rollout, subject), in the manner of TensorZero's
``get_uniform_value``: the same user lands in the same variant on every replica, on every
request, with no shared state, and different rollouts draw independently of each other.
"""

from __future__ import annotations

import hashlib

_SCALE = float(1 << 64)


def uniform(rollout_id: str, subject: str) -> float:
    """A value in [0, 1) fixed by ``rollout_id`` and ``subject`` (a user, a session, a key id).

    BLAKE2b (keyed by nothing, 8-byte digest) over both strings, length-prefixed so that
    ``("ab", "c")`` and ``("a", "bc")`` draw differently. The top 53 bits make the float, so
    it is exactly representable and strictly below 1.0.
    """
    first = rollout_id.encode()
    second = subject.encode()
    digest = hashlib.blake2b(
        len(first).to_bytes(4, "big") + first + second, digest_size=8
    ).digest()
    return (int.from_bytes(digest, "big") >> 11) / float(1 << 53)
