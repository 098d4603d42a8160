"""What the policy files and the caller's ``Cache-Control`` header say about one request.

Team policy (``teams.yaml``, ``cache:``) is turned into one small ``CacheRule`` per (team,
alias) the first time the pair is seen with a given catalog, so the request path does a
dict lookup instead of walking glob patterns. A policy reload brings a new catalog, which
starts a fresh table.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Final

from gateway.cache.keys import shared_scope, team_scope
from gateway.catalog import Catalog, Team

_MAX_RULES: Final = 100_000


@dataclass(frozen=True, slots=True)
class CacheRule:
    scope: str  # the key's scope part: t.TEAM, or s.NAME when shared
    ttl_ms: int
    nondeterministic: bool  # also cache requests that sample
    max_entry_bytes: int


def rule_for(team: Team | None, alias: str) -> CacheRule | None:
    """The team's cache rule for ``alias``, or None when the cache is off for the pair."""
    if team is None:
        return None
    spec = team.spec.cache
    override = spec.for_alias(alias)
    enabled = spec.enabled if override is None or override.enabled is None else override.enabled
    if not enabled:
        return None
    ttl_s = spec.ttl_s if override is None or override.ttl_s is None else override.ttl_s
    nondeterministic = spec.cache_nondeterministic
    if override is not None and override.cache_nondeterministic is not None:
        nondeterministic = override.cache_nondeterministic
    max_bytes = spec.max_entry_bytes
    if override is not None and override.max_entry_bytes is not None:
        max_bytes = override.max_entry_bytes
    scope = shared_scope(spec.share_scope) if spec.share_scope else team_scope(team.name)
    return CacheRule(scope, max(1, int(ttl_s * 1000)), nondeterministic, max_bytes)


def scopes_of(team: Team | None, name: str) -> tuple[str, ...]:
    """Every scope a team's entries may live in: its own, and its shared one if it has one.

    A team's own scope is listed even when it shares another: entries written before the
    policy changed are still there until they expire.
    """
    scopes = [team_scope(name)]
    if team is not None and team.spec.cache.share_scope:
        scopes.append(shared_scope(team.spec.cache.share_scope))
    return tuple(scopes)


class CacheRules:
    """(team, alias) → rule, memoised per catalog."""

    def __init__(self) -> None:
        self._catalog: Catalog | None = None
        self._rules: dict[tuple[str, str], CacheRule | None] = {}

    def get(self, catalog: Catalog, team: str, alias: str) -> CacheRule | None:
        if catalog is not self._catalog:
            self._catalog = catalog
            self._rules = {}
        pair = (team, alias)
        try:
            return self._rules[pair]
        except KeyError:
            pass
        rule = rule_for(catalog.team(team), alias)
        if len(self._rules) < _MAX_RULES:
            self._rules[pair] = rule
        return rule


@dataclass(frozen=True, slots=True)
class Directive:
    """The caller's ``Cache-Control`` request directives that the cache honours."""

    no_cache: bool = False  # skip the lookup, store the fresh answer
    no_store: bool = False  # neither read nor write
    max_age: float | None = None  # accept only an entry at most this many seconds old


NO_DIRECTIVE: Final = Directive()


@functools.lru_cache(maxsize=256)
def parse_cache_control(header: str) -> Directive:
    """Parse ``no-cache``, ``no-store`` and ``max-age=N`` (case-insensitive); ignore the rest.

    An unparsable ``max-age`` is ignored rather than rejected: Cache-Control is advisory,
    and a typo should not fail the request.
    """
    no_cache = no_store = False
    max_age: float | None = None
    for raw in header.split(","):
        directive = raw.strip().lower()
        if directive == "no-cache":
            no_cache = True
        elif directive == "no-store":
            no_store = True
        elif directive.startswith("max-age="):
            value = directive[8:].strip().strip('"')
            if value.isdigit():
                seconds = float(value)
                max_age = seconds if max_age is None else min(max_age, seconds)
    if not (no_cache or no_store or max_age is not None):
        return NO_DIRECTIVE
    return Directive(no_cache, no_store, max_age)
