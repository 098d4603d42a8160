"""One rollout as the request path sees it, built once per policy load with the catalog.

``build_rollouts`` checks what the schema alone cannot (the target alias exists, the canary
alias serves the same endpoint, the deployment index is in range) and resolves the stable and
canary deployments, so a request only compares strings and one hash.

Who is sticky (the *subject* of the draw ``uniform(rollout_id, subject)``):

1. the OpenAI ``user`` field of the request, if any;
2. else the ``x-session-id`` header, if any;
3. else, with ``subject_fallback: key``, the API key id (a whole key sees one variant);
4. else the request id: the request is assigned on its own, so such a caller may see both
   variants from one request to the next.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from gateway.config.rollouts import RolloutsFile, RolloutSpec

if TYPE_CHECKING:
    from gateway.catalog import Deployment, ModelAlias
    from gateway.context import RequestContext

STABLE = "stable"
CANARY = "canary"


@dataclass(frozen=True, slots=True)
class Rollout:
    id: str
    kind: Literal["prompt", "alias"]
    spec: RolloutSpec
    alias: str | None  # an alias rollout's target
    prompt: str | None  # a prompt rollout's target
    label: str  # a prompt rollout's label (what stable serves)
    canary_version: int | None  # a prompt rollout's canary
    stable: tuple[Deployment, ...] = ()  # an alias rollout: what stable routes to
    canary: tuple[Deployment, ...] = ()  # an alias rollout: what canary routes to
    weights: tuple[float, ...] = ()  # the steps' canary weights as fractions of 1
    _teams: tuple[str, ...] = ()
    _key_ids: frozenset[str] = frozenset()
    _labels: frozenset[str] = frozenset()
    _team_seen: dict[str, bool] = field(default_factory=dict, compare=False, repr=False)

    def matches(self, ctx: RequestContext, label: str | None = None) -> bool:
        """Whether the request takes part, by the rollout's ``match`` conditions (``label``: the
        prompt label asked for, when the resolve stage asks before it set ``ctx.prompt_label``).
        Only callers' requests take part: an evaluation or a shadow copy keeps to stable routing."""
        if ctx.origin.internal:
            return False
        if self._teams:
            team = ctx.team
            allowed = self._team_seen.get(team)
            if allowed is None:
                allowed = any(fnmatch.fnmatchcase(team, pattern) for pattern in self._teams)
                if len(self._team_seen) < 4096:
                    self._team_seen[team] = allowed
            if not allowed:
                return False
        if self._key_ids and (ctx.principal is None or ctx.principal.key_id not in self._key_ids):
            return False
        return not self._labels or (label or ctx.prompt_label) in self._labels


def subject_of(rollout: Rollout, ctx: RequestContext) -> str:
    """The sticky subject of the request (see the module docstring for the rule)."""
    if ctx.user:
        return "u:" + ctx.user
    if ctx.session_id:
        return "s:" + ctx.session_id
    if rollout.spec.subject_fallback == "key" and ctx.principal is not None:
        return "k:" + ctx.principal.key_id
    return "r:" + ctx.request_id


@dataclass(frozen=True, slots=True)
class RolloutIndex:
    """Every rollout of a catalog, indexed by what the request path looks up."""

    by_id: dict[str, Rollout] = field(default_factory=dict)
    by_alias: dict[str, tuple[Rollout, ...]] = field(default_factory=dict)
    by_prompt: dict[str, tuple[Rollout, ...]] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.by_id)


def _stable_of(deployments: tuple[Deployment, ...], skip: int | None) -> tuple[Deployment, ...]:
    return tuple(d for index, d in enumerate(deployments) if index != skip)


def build_rollouts(file: RolloutsFile, aliases: dict[str, ModelAlias], problems: list[str],
                   protected_labels: tuple[str, ...] | list[str] = ()) -> RolloutIndex:
    """The runtime rollouts; what cannot be resolved is appended to ``problems`` (file and field).

    A rollout of a protected prompt label must say ``start: manual``: it starts with
    ``gateway rollouts start``, which checks the approver role and the canary's evaluation,
    never merely because a policy file was applied.
    """
    by_id: dict[str, Rollout] = {}
    by_alias: dict[str, list[Rollout]] = {}
    by_prompt: dict[str, list[Rollout]] = {}
    for rollout_id, spec in file.rollouts.items():
        where = f"rollouts.yaml: rollouts.{rollout_id}.target"
        target = spec.target
        weights = tuple(step.weight / 100.0 for step in spec.steps)
        common = {
            "_teams": tuple(spec.match.teams), "_key_ids": frozenset(spec.match.key_ids),
            "_labels": frozenset(spec.match.labels), "weights": weights, "spec": spec, "id": rollout_id,
        }
        if target.alias is not None:
            alias = aliases.get(target.alias)
            if alias is None:
                problems.append(f"{where}.alias: no model alias {target.alias!r} in models.yaml")
                continue
            canary_spec = target.canary
            if canary_spec.alias is not None:
                other = aliases.get(canary_spec.alias)
                if other is None:
                    problems.append(f"{where}.canary.alias: no model alias {canary_spec.alias!r} in models.yaml")
                    continue
                if other.kind != alias.kind or other.name == alias.name:
                    problems.append(f"{where}.canary.alias: {other.name!r} must be another {alias.kind} alias")
                    continue
                stable, canary = alias.deployments, other.deployments
            else:
                index = canary_spec.deployment
                assert index is not None
                if index >= len(alias.deployments) or len(alias.deployments) < 2:
                    problems.append(
                        f"{where}.canary.deployment: alias {alias.name!r} has {len(alias.deployments)} "
                        f"deployment(s); the canary must be one of them and leave at least one for stable"
                    )
                    continue
                stable = _stable_of(alias.deployments, index)
                canary = (alias.deployments[index],)
            rollout = Rollout(kind="alias", alias=alias.name, prompt=None, label=target.label, canary_version=None,
                              stable=stable, canary=canary, **common)  # type: ignore[arg-type]
            by_alias.setdefault(alias.name, []).append(rollout)
        else:
            assert target.prompt is not None
            if target.label in protected_labels and spec.start == "auto":
                problems.append(f"rollouts.yaml: rollouts.{rollout_id}.start: the label {target.label!r} is protected; "
                                "its rollout needs `start: manual` and `gateway rollouts start` (approver role, "
                                "a passing evaluation of the canary)")
                continue
            rollout = Rollout(kind="prompt", alias=None, prompt=target.prompt, label=target.label,
                              canary_version=target.canary.version, **common)  # type: ignore[arg-type]
            same = [r for r in by_prompt.get(target.prompt, []) if r.label == target.label]
            if same:
                problems.append(f"{where}: prompt {target.prompt!r} label {target.label!r} already has rollout "
                                f"{same[0].id!r}; one rollout per label at a time")
                continue
            by_prompt.setdefault(target.prompt, []).append(rollout)
        by_id[rollout_id] = rollout
    return RolloutIndex(
        by_id, {name: tuple(found) for name, found in by_alias.items()},
        {name: tuple(found) for name, found in by_prompt.items()},
    )
