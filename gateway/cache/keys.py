"""Cache keys: a readable prefix for purging, and a hash of everything that shapes the answer.

A key looks like ``gwc:{scope}:{alias}:{prompt}:{version}:{digest}``:

* ``scope`` is ``t.TEAM`` (the default: a team only sees its own entries) or ``s.NAME`` for a
  scope that a policy shares between teams;
* ``alias``, ``prompt`` and ``version`` are there so that purges can find entries by them
  (``prompt`` and ``version`` are empty for a plain model call);
* ``digest`` is a 128-bit BLAKE2b hash of the canonical request.

The canonical request is the *exclusion list* over the body: every field is part of the key
except a few known not to change the answer (``stream``, ``user``, ``metadata``...). An
allow-list would silently drop a new or provider-specific parameter and serve the wrong
answer — the failure LiteLLM's users reported. The body is serialised with sorted keys, so
key order and whitespace in the caller's JSON never matter (the body was parsed already).
The deployments are hashed as a sorted *set*: routing draws their order at random per
request, but the set of models that may answer is what the answer depends on.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

import orjson

KEY_PREFIX: Final = "gwc"
LOCK_PREFIX: Final = "gwl"
#: Bumped when the canonical form changes, so old entries are never read with new meaning.
KEY_VERSION: Final = 1

#: Body fields that never change what the model answers. Everything else is part of the key.
EXCLUDED_FIELDS: Final = frozenset(
    {
        "model",  # replaced by the resolved alias and deployment set
        "stream",  # streamed and whole answers share entries
        "stream_options",  # only decides whether a usage chunk is sent; replay honours it
        "user",  # end-user id for abuse tracking
        "metadata",  # caller's tags, stored by the provider, not used for generation
        "store",  # whether the provider keeps the completion
        "safety_identifier",  # the successor of `user`
        "prompt_cache_key",  # a routing hint for the provider's prompt cache
        "prompt_cache_retention",
        "request_id",
        "x_request_id",
    }
)

_SAFE_CHARS: Final = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-")


@functools.lru_cache(maxsize=4096)
def encode_component(value: str) -> str:
    """Percent-encode anything but ``[A-Za-z0-9._-]``.

    Keeps ``:`` (the separator) and Redis glob characters (``*?[]\\``) out of key parts, so a
    SCAN pattern built from parts can only match what it means to.
    """
    if all(char in _SAFE_CHARS for char in value):
        return value
    return "".join(char if char in _SAFE_CHARS else "".join(f"%{b:02X}" for b in char.encode()) for char in value)


def team_scope(team: str) -> str:
    return "t." + encode_component(team)


def shared_scope(name: str) -> str:
    return "s." + encode_component(name)


@dataclass(frozen=True, slots=True)
class KeyParts:
    """The readable parts of a key, each already encoded (``prompt``/``version`` may be "")."""

    scope: str
    alias: str
    prompt: str
    version: str
    digest: str


def entry_key(scope: str, alias: str, prompt: str | None, version: int | None, digest: str) -> str:
    """``scope`` is already encoded (see ``team_scope``); the other parts are encoded here."""
    prompt_part = encode_component(prompt) if prompt else ""
    version_part = str(version) if version is not None else ""
    return f"{KEY_PREFIX}:{scope}:{encode_component(alias)}:{prompt_part}:{version_part}:{digest}"


def lock_key(key: str) -> str:
    """The cross-replica single-flight lock for an entry key (outside the ``gwc:`` namespace)."""
    return LOCK_PREFIX + key[len(KEY_PREFIX) :]


def parse_key(key: str) -> KeyParts | None:
    parts = key.split(":")
    if len(parts) != 6 or parts[0] != KEY_PREFIX:
        return None
    return KeyParts(parts[1], parts[2], parts[3], parts[4], parts[5])


def canonical_body(body: Mapping[str, Any]) -> dict[str, Any]:
    return {name: value for name, value in body.items() if name not in EXCLUDED_FIELDS}


def request_digest(
    endpoint: str,
    deployments: Iterable[tuple[str, str, str]],
    prompt: str | None,
    version: int | None,
    body: Mapping[str, Any],
) -> str:
    """The hash part of a key.

    ``deployments`` are (provider, model, base_url) triples; their order does not matter.
    ``body`` is the request as it will go upstream (after prompt rendering).
    """
    return digest_with(deployment_fingerprint(deployments), endpoint, prompt, version, body)


def deployment_fingerprint(deployments: Iterable[tuple[str, str, str]]) -> list[tuple[str, str, str]]:
    return sorted(set(deployments))


def digest_with(
    fingerprint: list[tuple[str, str, str]],
    endpoint: str,
    prompt: str | None,
    version: int | None,
    body: Mapping[str, Any],
) -> str:
    return body_digest(digest_prefix(fingerprint, endpoint, prompt, version), body)


def digest_prefix(
    fingerprint: list[tuple[str, str, str]], endpoint: str, prompt: str | None, version: int | None
) -> bytes:
    """The canonical form up to the body, ``[KEY_VERSION,endpoint,fingerprint,prompt,version,``.

    It depends on the routing and the prompt only, so the stage computes it once per
    deployment set and reuses it; only the body is serialised per request.
    """
    return orjson.dumps([KEY_VERSION, endpoint, fingerprint, prompt, version])[:-1] + b","


def body_digest(prefix: bytes, body: Mapping[str, Any]) -> str:
    """The digest of ``prefix`` (see ``digest_prefix``) completed with the canonical body.

    The bytes hashed are exactly those of serialising the whole list in one go (compact JSON,
    keys sorted), so keys do not depend on which of the two ways built them.
    """
    canonical = orjson.dumps(canonical_body(body), option=orjson.OPT_SORT_KEYS)
    return hashlib.blake2b(prefix + canonical + b"]", digest_size=16).hexdigest()


def is_deterministic(endpoint: str, body: Mapping[str, Any]) -> bool:
    """Whether the same request should give the same answer (worth caching by default).

    Embeddings always do. A chat request does with ``temperature`` 0 or a ``seed``; OpenAI's
    default temperature (absent or null) is 1, which samples.
    """
    if endpoint != "chat":
        return True
    if body.get("seed") is not None:
        return True
    temperature = body.get("temperature")
    return temperature is not None and temperature == 0 and not isinstance(temperature, bool)


@dataclass(frozen=True, slots=True)
class PurgeFilter:
    """Which entries a purge removes. ``scopes`` None means every scope; other None fields match all."""

    scopes: tuple[str, ...] | None = None
    alias: str | None = None
    prompt: str | None = None
    version: int | None = None

    def patterns(self) -> list[str]:
        """Redis SCAN MATCH patterns (a pre-filter; ``matches`` is the exact test)."""
        alias = encode_component(self.alias) if self.alias is not None else "*"
        prompt = encode_component(self.prompt) if self.prompt is not None else "*"
        version = str(self.version) if self.version is not None else "*"
        scopes = self.scopes if self.scopes is not None else ("*",)
        return [f"{KEY_PREFIX}:{scope}:{alias}:{prompt}:{version}:*" for scope in scopes]

    def matches(self, parts: KeyParts) -> bool:
        if self.scopes is not None and parts.scope not in self.scopes:
            return False
        if self.alias is not None and parts.alias != encode_component(self.alias):
            return False
        if self.prompt is not None and parts.prompt != encode_component(self.prompt):
            return False
        return self.version is None or parts.version == str(self.version)
