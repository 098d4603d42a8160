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
request; a repeated text costs one dictionary lookup. Identifiers are remembered alike (the
same user sends many requests). Under ``full`` only keys are scrubbed, and the whole JSON text
is checked at once first (``untouched``): with no known secret and no key-shaped hint in it,
it is sent as it is, without a walk through its strings (~6 µs less a span).

This runs in the exporter's background task, never on the request path.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from typing import Any, Literal

from gateway.redact import PATTERN_HINTS, SECRETS
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
        # Under ``full``: the secret masker's hints and the scrubber's patterns' (``untouched``),
        # each text looked for once, and none that holds another (where "Bearer " is, "Bearer" is).
        hints = set(self._secret.hints) | set(PATTERN_HINTS)
        self._full_hints = tuple(sorted(
            hint for hint in hints if not any(other != hint and other in hint for other in hints)
        ))
        self._maskers = [masker for masker in maskers if masker is not self._secret]
        self._key = hash_key or os.urandom(32)
        # Texts redacted before, by policy, and identifiers (hashed alike under mask and hash).
        self._cache: dict[str, dict[str, str]] = {"full": {}, "mask": {}, "hash": {}, "identifier": {}}
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

    def untouched(self, document: str, policy: Content) -> bool:
        """Whether ``structure`` would leave the value that ``document`` (orjson's JSON of it)
        encodes as it is, judged on the whole document at once: under ``full``, when neither a
        known secret nor a key-shaped one's hint is in it (most requests), instead of string by
        string. Other policies run maskers with no such hint: False."""
        if policy != "full":
            return False
        for hint in self._full_hints:
            if hint in document:
                return False
        return not SECRETS.known_in_json(document)

    def structure(self, value: Any, policy: Content) -> Any:
        """A JSON-like ``value`` (the messages, an answer) with each string, dictionary key and
        long integer redacted as ``policy`` says (``None`` for ``none``)."""
        if policy == "none":
            return None
        self._forget_if_secrets_changed()
        return self._walk(value, policy)

    def _walk(self, value: Any, policy: Content) -> Any:
        kind = type(value)
        if kind is str:
            return self._text(value, policy)
        if kind is dict:
            # A message is a dictionary of strings, most of them seen before: looked up here,
            # without a call per string.
            cache = self._cache[policy]
            redacted: dict[Any, Any] = {}
            for key, item in value.items():
                if type(key) is str:
                    done = cache.get(key)
                    key = done if done is not None else self._text(key, policy)
                if type(item) is str:
                    done = cache.get(item)
                    redacted[key] = done if done is not None else self._text(item, policy)
                else:
                    redacted[key] = self._walk(item, policy)
            return redacted
        if kind is list or kind is tuple:
            return [self._walk(item, policy) for item in value]
        if kind is int and not -_LONG_INT < value < _LONG_INT:
            digits = str(value)
            redacted_digits = self._text(digits, policy)
            return value if redacted_digits == digits else redacted_digits
        return value

    def _text(self, text: str, policy: Content) -> str:
        cache = self._cache[policy]
        done = cache.get(text)
        if done is None:
            done = self.content(text, policy)
            assert done is not None  # only "none" gives None, and it never comes here
            self._remember(cache, text, done)
        return done

    def _remember(self, cache: dict[str, str], text: str, done: str) -> None:
        size = len(text)
        if size <= CACHE_MAX_TEXT:
            if len(cache) >= CACHE_MAX_ENTRIES or self._cached_chars > CACHE_MAX_CHARS:
                self._empty_cache()
            cache[text] = done
            self._cached_chars += size + len(done)

    def _forget_if_secrets_changed(self) -> None:
        if self._generation != SECRETS.generation:  # a secret became known: cached text may hold it
            self._empty_cache()
            self._generation = SECRETS.generation

    def _empty_cache(self) -> None:
        for cache in self._cache.values():
            cache.clear()
        self._cached_chars = 0

    def identifier(self, value: str, policy: Content) -> str:
        """A user or session id: as is under ``full`` (known secrets scrubbed), else with what
        maskers find hashed."""
        if policy == "full":
            return SECRETS.scrub(value)
        self._forget_if_secrets_changed()
        cache = self._cache["identifier"]  # the same user sends many requests
        done = cache.get(value)
        if done is None:
            done = self.keys_out(value)
            for masker in self._maskers:
                done = masker.sub(done, self._hashed)
            self._remember(cache, value, done)
        return done
