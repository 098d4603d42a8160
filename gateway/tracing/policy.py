"""Which requests are traced and how much of their content goes with them, per team and alias.

A team's ``tracing:`` policy in ``teams.yaml`` (``sample_rate``, ``content``, per-alias
overrides by glob) refines ``tracing:`` in gateway.yaml. The record stage asks for the sample
rate of every request, so answers are remembered per (team, alias) until the catalog changes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gateway.catalog import Team
    from gateway.context import RequestContext
    from gateway.tracing.redaction import Content

_REMEMBERED_MAX = 4096


@dataclass(frozen=True, slots=True)
class TracePolicy:
    sample_rate: float
    content: Content


class TracePolicies:
    def __init__(self, default: TracePolicy) -> None:
        self.default = default
        # (id(team), alias) -> (team, policy): the team is held so its id is not reused.
        self._remembered: dict[tuple[int, str], tuple[Team, TracePolicy]] = {}

    def of(self, ctx: RequestContext) -> TracePolicy:
        """The policy for ``ctx``'s team and alias (the default for a request with no team)."""
        principal = ctx.principal
        if principal is None:
            return self.default
        team = ctx.catalog.team(principal.team)
        if team is None:
            return self.default
        alias = ctx.alias.name if ctx.alias is not None else (ctx.requested_model or "")
        key = (id(team), alias)
        found = self._remembered.get(key)
        if found is not None:
            return found[1]
        policy = self._resolve(team, alias)
        if len(self._remembered) >= _REMEMBERED_MAX:
            self._remembered.clear()
        self._remembered[key] = (team, policy)
        return policy

    def _resolve(self, team: Team, alias: str) -> TracePolicy:
        spec = team.spec.tracing
        rate = spec.sample_rate if spec.sample_rate is not None else self.default.sample_rate
        content = spec.content or self.default.content
        override = spec.for_alias(alias) if alias else None
        if override is not None:
            rate = override.sample_rate if override.sample_rate is not None else rate
            content = override.content or content
        return TracePolicy(rate, content)

    def forget(self, _catalog: object = None) -> None:
        """Drop what was remembered (a catalog listener: policies may have changed)."""
        self._remembered.clear()
