"""The runtime view of the policies: model aliases, their deployments, and teams.

Built once per policy load from the validated files and swapped atomically on
``gateway policies apply``; a request holds on to the catalog it started with, so a change
never applies to half a request.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from gateway.config.policies import DEFAULT_MAX_ANSWER_BYTES, DeploymentSpec, MockBehaviour, PolicyBundle, TeamSpec
from gateway.config.yamlfile import ConfigError
from gateway.pricing import FREE, Price, context_window, lookup, price_map
from gateway.rollouts.model import RolloutIndex, build_rollouts
from gateway.routing.data_classes import OFF, DataClassPolicy, build_policy, receivable
from gateway.shadow.rules import ShadowIndex, build_shadow_index


@dataclass(frozen=True, slots=True)
class Deployment:
    """One upstream that can serve an alias."""

    id: str  # "alias#index", stable across loads while the file does not reorder deployments
    alias: str
    provider: str
    model: str
    base_url: str
    api_key: str = field(repr=False)  # never printed: repr, logs and errors leave it out
    timeout_s: float
    connect_timeout_s: float
    retries: int
    weight: float
    price: Price
    mock: MockBehaviour
    # The data classes it may receive (gateway.routing.data_classes.receivable); empty when off.
    data_classes: frozenset[str] = frozenset()
    tags: Mapping[str, str] = field(default_factory=dict)
    max_input_tokens: int | None = None  # context window for the prompt (None: not checked)
    max_answer_bytes: int = DEFAULT_MAX_ANSWER_BYTES  # the largest answer passed on (every provider)

    @property
    def label(self) -> str:
        """A safe name for logs and metrics: provider and model, never URL credentials or keys."""
        return f"{self.provider}/{self.model}"

    def admits(self, data_class: str | None) -> bool:
        """Whether this deployment may receive a request of ``data_class`` (``None``: classes off)."""
        return data_class is None or data_class in self.data_classes


@dataclass(frozen=True, slots=True)
class ModelAlias:
    name: str
    kind: Literal["chat", "embedding"]
    description: str
    deployments: tuple[Deployment, ...]
    fallbacks: tuple[str, ...] = ()  # aliases to try when every deployment failed
    # Per (team, data class): the fallbacks' permitted deployments and how many were withheld
    # (gateway.routing.fallbacks); fixed for the life of the catalog, so found once.
    fallbacks_seen: dict[tuple[str, str | None], tuple[tuple[tuple[tuple[Deployment, ...], float], ...], int]] = field(
        default_factory=dict, compare=False, repr=False
    )


@dataclass(frozen=True, slots=True)
class Team:
    name: str
    spec: TeamSpec
    # Glob matching per request showed in profiles; answers are remembered per catalog (a
    # policy change builds new Team objects). Bounded, since callers choose the names asked.
    _models_seen: dict[str, bool] = field(default_factory=dict, compare=False, repr=False)
    _prompts_seen: dict[str, bool] = field(default_factory=dict, compare=False, repr=False)

    def allows_model(self, alias: str) -> bool:
        allowed = self._models_seen.get(alias)
        if allowed is None:
            allowed = self.spec.allows_model(alias)
            _remember(self._models_seen, alias, allowed)
        return allowed

    def allows_prompt(self, name: str) -> bool:
        allowed = self._prompts_seen.get(name)
        if allowed is None:
            allowed = self.spec.allows_prompt(name)
            _remember(self._prompts_seen, name, allowed)
        return allowed


_SEEN_LIMIT = 4096


def _remember(seen: dict[str, bool], name: str, allowed: bool) -> None:
    if len(seen) >= _SEEN_LIMIT:
        seen.clear()
    seen[name] = allowed


#: The team of the bootstrap admin key; it may call every alias.
ADMIN_TEAM = Team("admin", TeamSpec(models=["*"], prompts=["*"]))


@dataclass(frozen=True)
class Catalog:
    aliases: dict[str, ModelAlias]
    teams: dict[str, Team]
    bundle: PolicyBundle
    rollouts: RolloutIndex = field(default_factory=RolloutIndex)  # policies/rollouts.yaml
    data_classes: DataClassPolicy = OFF  # policies/data_classes.yaml
    shadows: ShadowIndex = field(default_factory=ShadowIndex)  # policies/shadows.yaml

    def team(self, name: str) -> Team | None:
        if name == ADMIN_TEAM.name and name not in self.teams:
            return ADMIN_TEAM
        return self.teams.get(name)

    def providers_in_use(self) -> set[str]:
        return {d.provider for alias in self.aliases.values() for d in alias.deployments}

    def secret_values(self) -> set[str]:
        """The deployments' provider keys, for ``gateway.redact`` to scrub by value."""
        return {d.api_key for alias in self.aliases.values() for d in alias.deployments if d.api_key}


def _price_for(alias: str, index: int, spec: DeploymentSpec) -> Price:
    unpriced = spec.input_cost_per_token is None and spec.output_cost_per_token is None
    if (spec.free or spec.provider == "mock") and unpriced:
        return Price(0.0, 0.0, spec.max_output_tokens)
    mapped = lookup(spec.price_model or spec.model, spec.provider)
    input_cost = spec.input_cost_per_token
    output_cost = spec.output_cost_per_token
    if input_cost is None and mapped is not None:
        input_cost = mapped.input_per_token
    if output_cost is None and mapped is not None:
        output_cost = mapped.output_per_token
    if input_cost is None or output_cost is None:
        if spec.free:
            return FREE
        raise ConfigError(
            [
                f"models.yaml: aliases.{alias}.deployments.{index}: no price for model {spec.model!r} "
                "(not in litellm's price map); set input_cost_per_token and output_cost_per_token, "
                "or free: true"
            ]
        )
    max_out = spec.max_output_tokens or (mapped.max_output_tokens if mapped else None)
    return Price(input_cost, output_cost, max_out)


def _window_for(spec: DeploymentSpec) -> int | None:
    """The prompt's limit: the policy's, else the price map's (the mock has none of its own)."""
    if spec.max_input_tokens is not None or spec.provider == "mock":
        return spec.max_input_tokens
    return context_window(spec.price_model or spec.model, spec.provider)


def _check_classes(bundle: PolicyBundle, policy: DataClassPolicy, problems: list[str]) -> None:
    """Every class a deployment or team names exists; without classes, none may be named."""
    known = f"the classes in data_classes.yaml are {list(policy.order)}" if policy.enabled else (
        "data_classes.yaml defines no classes"
    )
    for name, alias_spec in bundle.models.aliases.items():
        for index, spec in enumerate(alias_spec.deployments):
            if spec.max_data_class is not None and spec.max_data_class not in policy.rank:
                problems.append(f"models.yaml: aliases.{name}.deployments.{index}.max_data_class: "
                                f"unknown class {spec.max_data_class!r}; {known}")
    for team_name, team in bundle.teams.teams.items():
        if team.data_class is not None and team.data_class not in policy.rank:
            problems.append(f"teams.yaml: teams.{team_name}.data_class: unknown class {team.data_class!r}; {known}")


def _check_references(bundle: PolicyBundle, problems: list[str]) -> None:
    """Fallbacks and downgrades name existing aliases of the same kind."""
    aliases = bundle.models.aliases
    for name, alias_spec in aliases.items():
        for fallback in alias_spec.fallbacks:
            target = aliases.get(fallback)
            if fallback == name or target is None or target.kind != alias_spec.kind:
                problems.append(f"models.yaml: aliases.{name}.fallbacks: {fallback!r} is not another "
                                f"{alias_spec.kind} alias")
    for team_name, team in bundle.teams.teams.items():
        downgrade = team.budget.downgrade if team.budget is not None else None
        if downgrade is None:
            continue
        source, target = aliases.get(downgrade.from_alias), aliases.get(downgrade.to_alias)
        if source is None or target is None or source.kind != target.kind or source is target:
            problems.append(f"teams.yaml: teams.{team_name}.budget.downgrade: from {downgrade.from_alias!r} and "
                            f"to {downgrade.to_alias!r} must be two existing aliases of the same kind")


def build_catalog(bundle: PolicyBundle) -> Catalog:
    problems: list[str] = []
    aliases: dict[str, ModelAlias] = {}
    classes = build_policy(bundle.data_classes)
    _check_classes(bundle, classes, problems)
    _check_references(bundle, problems)
    for name, alias_spec in bundle.models.aliases.items():
        deployments = []
        for index, spec in enumerate(alias_spec.deployments):
            try:
                price = _price_for(name, index, spec)
            except ConfigError as exc:
                problems.extend(exc.problems)
                continue
            max_class = spec.max_data_class if spec.max_data_class in classes.rank else None
            deployments.append(
                Deployment(
                    id=f"{name}#{index}",
                    alias=name,
                    provider=spec.provider,
                    model=spec.model,
                    base_url=spec.base_url.rstrip("/"),
                    api_key=spec.api_key.get_secret_value(),
                    timeout_s=spec.timeout_s,
                    connect_timeout_s=spec.connect_timeout_s,
                    retries=spec.retries,
                    weight=spec.weight,
                    price=price,
                    mock=spec.mock,
                    data_classes=receivable(classes, max_class, spec.tags),
                    tags=dict(spec.tags),
                    max_input_tokens=_window_for(spec),
                    max_answer_bytes=spec.max_answer_bytes,
                )
            )
        aliases[name] = ModelAlias(name, alias_spec.kind, alias_spec.description, tuple(deployments),
                                   tuple(alias_spec.fallbacks))
    teams = {name: Team(name, spec) for name, spec in bundle.teams.teams.items()}
    rollouts = build_rollouts(bundle.rollouts, aliases, problems, bundle.prompts.protected_labels)
    shadows = build_shadow_index(bundle.shadows, aliases, rollouts, problems)
    # The price map is ~9 MiB of Python objects needed only while pricing deployments:
    # drop it rather than carry it for the life of the process (a reload reads it again).
    price_map.cache_clear()
    if problems:
        raise ConfigError(problems)
    return Catalog(aliases=aliases, teams=teams, bundle=bundle, rollouts=rollouts, data_classes=classes,
                   shadows=shadows)
