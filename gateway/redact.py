"""Scrubbing secrets out of text that leaves the gateway (logs, errors, error events, traces).

Keys are never logged on purpose; this is the second line of defence for text the gateway
does not control, such as an upstream's error message that echoes a key back. Two nets:

- **exact values**: every secret the configuration holds (provider keys, the admin key, the
  prompt signing key, Langfuse keys, passwords in database and Redis URLs), whatever it looks
  like: a 32-hex-character key matches no pattern. Values shorter than ``MIN_SECRET_CHARS``
  are left to the patterns: scrubbing every "abc" out of every log line would hide more
  than it protects, and a key that short is not a secret worth the name.
- **patterns**: shapes of keys the gateway may never have seen (``sk-…``, ``gw-…``, bearer
  tokens, Langfuse keys), e.g. a key of another deployment echoed by a shared upstream.

One ``Scrubber`` serves the process: the runtime tells it the secrets at start-up and on every
policy change, and the log handlers and the error renderer read it. It is the one piece of
state shared this way, because log records are produced in every layer (third-party loggers
included) and must all pass through it.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable
from typing import Final
from urllib.parse import urlsplit

import orjson

REDACTED: Final = "[redacted]"
MIN_SECRET_CHARS: Final = 8

_SECRET_PATTERNS = re.compile(
    r"(gw-[A-Za-z0-9_\-]{8,}|sk-[A-Za-z0-9_\-*]{6,}|sk-ant-[A-Za-z0-9_\-]{6,}|"
    r"Bearer\s+[A-Za-z0-9_\-\.=]{8,}|pk-lf-[A-Za-z0-9\-]{6,}|sk-lf-[A-Za-z0-9\-]{6,})"
)

#: Every match of ``_SECRET_PATTERNS`` holds one of these.
PATTERN_HINTS: Final = ("gw-", "sk-", "Bearer", "pk-lf-")


class Scrubber:
    """Replaces known secret values and secret-shaped text with ``[redacted]``."""

    def __init__(self) -> None:
        self._exact: re.Pattern[str] | None = None
        # The same values as JSON writes them inside a string (quotes, backslashes and control
        # characters escaped): what ``may_change_json`` looks for.
        self._exact_in_json: re.Pattern[str] | None = None
        self._sources: dict[str, frozenset[str]] = {}
        self._lock = threading.Lock()  # log records are formatted on any thread
        #: Goes up whenever the set of secrets changes: whoever keeps scrubbed text knows when
        #: it may hold a secret that is now known (``gateway.tracing.redaction``'s cache).
        self.generation = 0

    def use(self, source: str, secrets: Iterable[str]) -> None:
        """Set the secrets ``source`` (e.g. "settings", "catalog") holds, replacing its last set."""
        values = frozenset(value for value in secrets if value and len(value) >= MIN_SECRET_CHARS)
        with self._lock:
            self._sources[source] = values
            every = sorted(set().union(*self._sources.values()), key=len, reverse=True)  # longest first
            self._exact = re.compile("|".join(map(re.escape, every))) if every else None
            escaped = sorted({orjson.dumps(value).decode()[1:-1] for value in every}, key=len, reverse=True)
            self._exact_in_json = re.compile("|".join(map(re.escape, escaped))) if escaped else None
            self.generation += 1

    def scrub(self, text: str) -> str:
        exact = self._exact
        if exact is not None:
            text = exact.sub(REDACTED, text)
        return _SECRET_PATTERNS.sub(REDACTED, text)

    def may_change_json(self, document: str) -> bool:
        """Whether ``scrub`` might change any string of ``document`` (JSON as orjson writes it),
        judged on the whole document at once. JSON escapes a string character by character, so
        a known secret inside a string shows in the document as its own escaped form, and every
        pattern's match holds one of ``PATTERN_HINTS``, which JSON never escapes: with neither
        in the document, scrubbing each string would leave it as it is."""
        for hint in PATTERN_HINTS:
            if hint in document:
                return True
        return self.known_in_json(document)

    def known_in_json(self, document: str) -> bool:
        """Whether a known secret, as JSON escapes it inside a string, is in ``document`` (the
        half of ``may_change_json`` that the patterns' hints do not cover)."""
        exact = self._exact_in_json
        return exact is not None and exact.search(document) is not None

    def scrub_bytes(self, data: bytes) -> bytes:
        return self.scrub(data.decode("utf-8", "replace")).encode()


#: The process's scrubber (see the module docstring).
SECRETS: Final = Scrubber()


def redact(text: str) -> str:
    """``text`` with every known secret and secret-shaped string replaced by ``[redacted]``."""
    return SECRETS.scrub(text)


def url_password(url: str) -> str:
    """The password in ``scheme://user:password@host/...``, or ""."""
    try:
        return urlsplit(url).password or ""
    except ValueError:
        return ""


def redact_url(url: str) -> str:
    """``url`` with its password, if any, replaced: fit to print."""
    password = url_password(url)
    return url.replace(f":{password}@", f":{REDACTED}@", 1) if password else url
