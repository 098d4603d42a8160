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

Inputs and outputs are redacted string by string (``structure``), each string of the
messages on its own: a system prompt or a template's fixed text comes back on every request,
and is redacted once, then found in a bounded cache of texts seen before (``CACHE_*``; a
change to the known secrets empties it). Six masker passes over a whole input cost ~30 µs a
request; a repeated text costs one dictionary lookup.

This runs in the exporter's background task, never on the request path.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from typing import Any, Literal

from gateway.redact import SECRETS
from gateway.tracing.maskers import MASKERS, Masker

Content = Literal["full", "mask", "hash", "none"]

_LETTERS = bytes.maketrans(b"0123456789abcdef", b"abcdefghijklmnop")


#: The cache of redacted texts: texts longer than CACHE_MAX_TEXT are redacted every time; the
#: cache is emptied when it holds CACHE_MAX_ENTRIES texts or CACHE_MAX_CHARS characters (texts
#: and their redacted forms), so a stream of unique texts costs a bounded ~1 MiB at most.
CACHE_MAX_TEXT = 16 * 1024
CACHE_MAX_ENTRIES = 4096
CACHE_MAX_CHARS = 512 * 1024
#: Integers this long can be card, phone or account numbers: redacted as text.
_LONG_INT = 10**6


def _masked(kind: str, _value: str) -> str:
    return f"[{kind}]"


class Redactor:
    """Applies a content policy to text with a fixed set of maskers and one hash key."""

    def __init__(self, maskers: list[Masker], *, hash_key: bytes = b"") -> None:
        self._secret = MASKERS["secret"]
        self._maskers = [masker for masker in maskers if masker is not self._secret]
        self._key = hash_key or os.urandom(32)
        self._cache: dict[Content, dict[str, str]] = {"full": {}, "mask": {}, "hash": {}}
        self._cached_chars = 0
        self._generation = SECRETS.generation

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

    def structure(self, value: Any, policy: Content) -> Any:
        """A JSON-like ``value`` (the messages, an answer) with each string, dictionary key and
        long integer redacted as ``policy`` says (``None`` for ``none``)."""
        if policy == "none":
            return None
        if self._generation != SECRETS.generation:  # a secret became known: cached text may hold it
            self._empty_cache()
            self._generation = SECRETS.generation
        return self._walk(value, policy)

    def _walk(self, value: Any, policy: Content) -> Any:
        kind = type(value)
        if kind is str:
            return self._text(value, policy)
        if kind is dict:
            return {self._text(key, policy) if type(key) is str else key: self._walk(item, policy)
                    for key, item in value.items()}
        if kind is list or kind is tuple:
            return [self._walk(item, policy) for item in value]
        if kind is int and not -_LONG_INT < value < _LONG_INT:
            digits = str(value)
            redacted = self._text(digits, policy)
            return value if redacted == digits else redacted
        return value

    def _text(self, text: str, policy: Content) -> str:
        cache = self._cache[policy]
        done = cache.get(text)
        if done is None:
            done = self.content(text, policy)
            assert done is not None  # only "none" gives None, and it never comes here
            size = len(text)
            if size <= CACHE_MAX_TEXT:
                if len(cache) >= CACHE_MAX_ENTRIES or self._cached_chars > CACHE_MAX_CHARS:
                    self._empty_cache()
                cache[text] = done
                self._cached_chars += size + len(done)
        return done

    def _empty_cache(self) -> None:
        for cache in self._cache.values():
            cache.clear()
        self._cached_chars = 0

    def identifier(self, value: str, policy: Content) -> str:
        """A user or session id: as is under ``full`` (known secrets scrubbed), else with what
        maskers find hashed."""
        if policy == "full":
            return SECRETS.scrub(value)
        value = self.keys_out(value)
        for masker in self._maskers:
            value = masker.sub(value, self._hashed)
        return value
