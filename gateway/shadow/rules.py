"""Shadow rules as the request path sees them, built once per policy load with the catalog.

``build_shadow_index`` checks what the schema alone cannot (the aliases and the rollout exist, both
ends are chat aliases) and indexes the rules by what a request is looked up by: its alias, its
prompt and label, its rollout. The shadow routing strategy (``gateway.routing.shadow``) asks
``ShadowIndex.rules_for`` once per caller request; with no rules that is one truth test.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from gateway.config.shadows import PROMPT_TARGET, ShadowRuleSpec, ShadowsFile

if TYPE_CHECKING:
    from gateway.catalog import ModelAlias
    from gateway.rollouts.model import RolloutIndex


@dataclass(frozen=True, slots=True)
class ShadowRule:
    id: str
    target: str  # an alias, or prompt:NAME@vN
    sample_rate: float
    spec: ShadowRuleSpec
    target_alias: str | None = None  # the target when it is an alias (None for a prompt target)
    variant: str | None = None  # with a rollout attachment: only this variant


@dataclass(frozen=True, slots=True)
class ShadowIndex:
    """Every shadow rule of a catalog, by what it is attached to."""

    by_id: dict[str, ShadowRule] = field(default_factory=dict)
    by_alias: dict[str, tuple[ShadowRule, ...]] = field(default_factory=dict)
    by_prompt: dict[tuple[str, str], tuple[ShadowRule, ...]] = field(default_factory=dict)
    by_rollout: dict[str, tuple[ShadowRule, ...]] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.by_id)

    def rules_for(
        self, alias: str, prompt_name: str | None, prompt_label: str | None, rollout: str | None, variant: str | None
    ) -> tuple[ShadowRule, ...]:
        """The rules a request matches: by its alias, its prompt and label, and its rollout.

        Every caller's request asks, so the common cases (no rule, rules on aliases only) cost
        a dict lookup or two and build nothing.
        """
        found = self.by_alias.get(alias, ())
        if prompt_name is not None and self.by_prompt:
            more = self.by_prompt.get((prompt_name, prompt_label or ""))
            if more:
                found = found + more
        if rollout is not None and self.by_rollout:
            candidates = self.by_rollout.get(rollout)
            if candidates:
                found = found + tuple(rule for rule in candidates if rule.variant is None or rule.variant == variant)
        return found


def build_shadow_index(
    file: ShadowsFile, aliases: dict[str, ModelAlias], rollouts: RolloutIndex, problems: list[str]
) -> ShadowIndex:
    """The runtime rules; what cannot be resolved is appended to ``problems`` (file and field)."""
    by_id: dict[str, ShadowRule] = {}
    by_alias: dict[str, list[ShadowRule]] = {}
    by_prompt: dict[tuple[str, str], list[ShadowRule]] = {}
    by_rollout: dict[str, list[ShadowRule]] = {}
    for rule_id, spec in file.shadows.items():
        where = f"shadows.yaml: shadows.{rule_id}"
        target_alias: str | None = None
        if not PROMPT_TARGET.match(spec.target):
            found = aliases.get(spec.target)
            if found is None:
                problems.append(f"{where}.target: no model alias {spec.target!r} in models.yaml")
                continue
            if found.kind != "chat":
                problems.append(
                    f"{where}.target: {spec.target!r} is an {found.kind} alias; shadows compare chat answers"
                )
                continue
            target_alias = found.name
        traffic = spec.traffic
        rule = ShadowRule(rule_id, spec.target, spec.sample_rate, spec, target_alias, traffic.variant)
        if traffic.alias is not None:
            attached = aliases.get(traffic.alias)
            if attached is None:
                problems.append(f"{where}.traffic.alias: no model alias {traffic.alias!r} in models.yaml")
                continue
            if attached.kind != "chat":
                problems.append(
                    f"{where}.traffic.alias: {traffic.alias!r} is an {attached.kind} alias; shadows copy chat requests"
                )
                continue
            by_alias.setdefault(traffic.alias, []).append(rule)
        elif traffic.prompt is not None:
            by_prompt.setdefault((traffic.prompt, traffic.label), []).append(rule)
        else:
            assert traffic.rollout is not None
            if traffic.rollout not in rollouts.by_id:
                problems.append(f"{where}.traffic.rollout: no rollout {traffic.rollout!r} in rollouts.yaml")
                continue
            by_rollout.setdefault(traffic.rollout, []).append(rule)
        by_id[rule_id] = rule
    return ShadowIndex(
        by_id,
        {name: tuple(rules) for name, rules in by_alias.items()},
        {key: tuple(rules) for key, rules in by_prompt.items()},
        {name: tuple(rules) for name, rules in by_rollout.items()},
    )
