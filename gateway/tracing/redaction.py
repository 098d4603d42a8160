"""What of a request's content may leave in a trace: the team's policy, applied to text.

Four policies (``teams.yaml`` ``tracing.content``, else ``tracing.content`` in gateway.yaml):

- ``full``: inputs and outputs as they were;
- ``mask``: every thing a masker finds is replaced by its kind, ``[email]``, ``[card]``...;
- ``hash``: replaced by its kind and a keyed hash, ``[email#pdkbmhfaocjgnlie]``, so the same
  address shows the same hash (within one hash key) and nothing reveals it. The hash is written
  in the letters a to p, never digits, so no later masker mistakes it for a number;
- ``none``: inputs and outputs are not sent at all.

Whatever the policy, API keys never leave: every configured secret is scrubbed by value
(``gateway.redact``) and the key-shaped ``secret`` masker always runs. Identifiers (the
caller's ``user``, ``x-session-id``) are hashed when the policy is not ``full``, so Langfuse
still groups by user without learning who that is.

This runs in the exporter's background task, never on the request path.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from typing import Literal

from gateway.redact import SECRETS
from gateway.tracing.maskers import MASKERS, Masker

Content = Literal["full", "mask", "hash", "none"]

_LETTERS = bytes.maketrans(b"0123456789abcdef", b"abcdefghijklmnop")


def _masked(kind: str, _value: str) -> str:
    return f"[{kind}]"


class Redactor:
    """Applies a content policy to text with a fixed set of maskers and one hash key."""

    def __init__(self, maskers: list[Masker], *, hash_key: bytes = b"") -> None:
        self._secret = MASKERS["secret"]
        self._maskers = [masker for masker in maskers if masker is not self._secret]
        self._key = hash_key or os.urandom(32)

    def _hashed(self, kind: str, value: str) -> str:
        digest = hmac.new(self._key, value.encode(), hashlib.sha256).hexdigest()[:16]
        return f"[{kind}#{digest.encode().translate(_LETTERS).decode()}]"

    def keys_out(self, text: str) -> str:
        """``text`` without any API key (by value and by shape): what every policy does."""
        return self._secret.sub(SECRETS.scrub(text), _masked)

    def content(self, text: str, policy: Content) -> str | None:
        """``text`` as ``policy`` lets it leave (``None`` for ``none``)."""
        if policy == "none":
            return None
        text = self.keys_out(text)
        if policy == "full":
            return text
        replace = _masked if policy == "mask" else self._hashed
        for masker in self._maskers:
            text = masker.sub(text, replace)
        return text

    def identifier(self, value: str, policy: Content) -> str:
        """A user or session id: as is under ``full`` (known secrets scrubbed), else with what
        maskers find hashed."""
        if policy == "full":
            return SECRETS.scrub(value)
        value = self.keys_out(value)
        for masker in self._maskers:
            value = masker.sub(value, self._hashed)
        return value
