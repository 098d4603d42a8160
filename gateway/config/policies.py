"""Policy files under ``policies/``: model aliases (``models.yaml``), teams (``teams.yaml``),
the prompt policy (``prompts.yaml``), rollouts (``rollouts.yaml``, see ``rollouts.py``), data
classes (``data_classes.yaml``) and shadow traffic (``shadows.yaml``, see ``shadows.py``).

These are the edge models: strict pydantic schemas with a description per field, validated
with file and line in every error. The request path never sees them; ``gateway.catalog``
turns them into plain runtime objects once per load.
"""

from __future__ import annotations

import fnmatch
from pathlib import Path
from typing import Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from gateway.config.rollouts import RolloutsFile
from gateway.config.shadows import ShadowsFile
from gateway.config.yamlfile import ConfigError, load_yaml, validate

PolicyFile = TypeVar("PolicyFile", bound=BaseModel)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class MockBehaviour(_Strict):
    """How the built-in ``mock`` provider behaves: latency and injected failures."""

    latency_ms: float = Field(0.0, ge=0, description="Delay before the answer (and between stream chunks / 10).")
    error_rate: float = Field(0.0, ge=0, le=1, description="Share of calls that fail with error_status.")
    error_status: int = Field(500, ge=400, le=599)
    stream_chunks: int = Field(8, ge=1, le=4096, description="Content chunks in a streamed answer.")


#: A bound, not a budget: a 100,000-token stream is ~20 MB of SSE, 2,048 embeddings of 3,072
#: floats as JSON ~65 MB. It stops an upstream that answers without end from taking the
#: gateway's memory (and every other team's requests with it).
DEFAULT_MAX_ANSWER_BYTES = 128 * 1024 * 1024


class DeploymentSpec(_Strict):
    provider: str = Field(
        ...,
        description="openai (any OpenAI-compatible server, fast path), mock (built-in, offline), "
        "or a litellm provider such as anthropic.",
    )
    model: str = Field(..., description="The model name the upstream knows.")
    base_url: str = Field("", description="Upstream base URL, e.g. https://api.openai.com/v1.")
    api_key: SecretStr = Field(SecretStr(""), description="Upstream key; use ${ENV_VAR}, never a literal.")
    timeout_s: float = Field(60.0, gt=0, description="Whole-request timeout (time to first byte when streaming).")
    connect_timeout_s: float = Field(5.0, gt=0)
    max_answer_bytes: int = Field(
        DEFAULT_MAX_ANSWER_BYTES, gt=0,
        description="Largest answer read from this upstream (a JSON body, or a stream's bytes in all; decompressed). "
        "Past it the call fails with 502 upstream_answer_too_large, or the stream ends with that error event. "
        "litellm providers read answers themselves: their streams are bounded by what litellm hands over, and a "
        "JSON answer is checked once litellm has read it.",
    )
    retries: int = Field(1, ge=0, le=10, description="Retries on this deployment before falling back.")
    weight: float = Field(1.0, ge=0, description="Share of traffic among this alias' deployments.")
    input_cost_per_token: float | None = Field(None, ge=0, description="USD; default from litellm's price map.")
    output_cost_per_token: float | None = Field(None, ge=0, description="USD; default from litellm's price map.")
    price_model: str | None = Field(None, description="Name to look up in the price map, if not `model`.")
    free: bool = Field(False, description="Explicitly free: no price needed (local models, mock).")
    max_output_tokens: int | None = Field(None, gt=0, description="Default from the price map.")
    max_input_tokens: int | None = Field(
        None, gt=0, description="Context window for the prompt; a longer prompt skips this deployment. "
        "Default from the price map (none: no limit is checked)."
    )
    max_data_class: str | None = Field(
        None, description="The highest data class (data_classes.yaml) this deployment may receive; "
        "default: the lowest class."
    )
    tags: dict[str, str] = Field(
        default_factory=dict, description="Free-form facts (region: eu, hosting: self) that data-class rules match."
    )
    mock: MockBehaviour = MockBehaviour()

    @model_validator(mode="after")
    def _provider_needs_url(self) -> DeploymentSpec:
        if self.provider == "openai" and not self.base_url:
            raise ValueError("an openai deployment needs base_url")
        return self


class AliasSpec(_Strict):
    kind: Literal["chat", "embedding"] = Field("chat", description="Which endpoint the alias serves.")
    description: str = ""
    deployments: list[DeploymentSpec] = Field(..., min_length=1)
    fallbacks: list[str] = Field(
        default_factory=list,
        description="Aliases tried in order when every deployment of this one failed before the caller saw a byte.",
    )


class ModelsFile(_Strict):
    aliases: dict[str, AliasSpec] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _names_are_plain(self) -> ModelsFile:
        for name in self.aliases:
            if name.startswith("prompt:") or not name or any(c.isspace() for c in name):
                raise ValueError(f"alias name {name!r} is reserved or contains spaces")
        return self


class CacheOverrideSpec(_Strict):
    """Per-alias changes to a team's cache policy; a field left unset keeps the team's value."""

    enabled: bool | None = Field(None, description="Cache this alias for the team (or not).")
    ttl_s: float | None = Field(None, gt=0, le=30 * 86400, description="Entry lifetime in seconds.")
    cache_nondeterministic: bool | None = Field(
        None, description="Also cache requests with temperature > 0 and no seed."
    )
    max_entry_bytes: int | None = Field(None, ge=1, description="Answers larger than this are not cached.")


class TeamCacheSpec(_Strict):
    """The response cache for one team. Off unless enabled: a cached answer is a product decision."""

    enabled: bool = Field(False, description="Serve repeated identical requests from the cache.")
    ttl_s: float = Field(3600.0, gt=0, le=30 * 86400, description="Entry lifetime in seconds.")
    cache_nondeterministic: bool = Field(
        False,
        description="Also cache requests that sample (temperature > 0, or absent, without a seed); "
        "off by default because such callers usually want a fresh answer each time.",
    )
    max_entry_bytes: int = Field(512 * 1024, ge=1, description="Answers larger than this are not cached.")
    share_scope: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9._-]{1,64}$",
        description="Teams naming the same share_scope read and write one shared set of entries; "
        "without it a team only ever sees its own entries.",
    )
    aliases: dict[str, CacheOverrideSpec] = Field(
        default_factory=dict,
        description="Per-alias overrides, keyed by alias name or glob; the first matching key wins.",
    )

    def for_alias(self, alias: str) -> CacheOverrideSpec | None:
        for pattern, override in self.aliases.items():
            if fnmatch.fnmatchcase(alias, pattern):
                return override
        return None


class SubBudgetSpec(_Strict):
    """A tighter limit inside a team's budget, for one API key or one model alias (same period)."""

    limit_usd: float = Field(..., ge=0, description="USD per period for this key or alias.")
    hard: bool | None = Field(None, description="Refuse past the limit (true) or only alert; default: the team's.")


class DowngradeSpec(_Strict):
    """Past ``at_pct`` of the period's budget, requests for the alias ``from`` go to ``to``."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    at_pct: float = Field(..., gt=0, le=100, description="Share of the team's limit spent, in percent.")
    from_alias: str = Field(..., alias="from", description="The alias asked for.")
    to_alias: str = Field(..., alias="to", description="The alias that serves it instead.")


class BudgetSpec(_Strict):
    """What a team may spend per calendar period (UTC), enforced atomically across replicas."""

    limit_usd: float = Field(..., ge=0, description="USD per period.")
    period: Literal["daily", "weekly", "monthly"] = Field(
        "monthly", description="Calendar period in UTC: days, ISO weeks (from Monday) or months."
    )
    hard: bool = Field(True, description="true: refuse requests past the limit (429). false: admit and alert.")
    alert_thresholds: list[float] = Field(
        default_factory=lambda: [50.0, 80.0, 95.0],
        description="Percentages of the limit that raise one alert each per period (100 is always added).",
    )
    webhook_url: str = Field("", description="POSTed a JSON alert per threshold crossing; use ${ENV_VAR}.")
    keys: dict[str, SubBudgetSpec] = Field(default_factory=dict, description="Per API key id (key_...).")
    aliases: dict[str, SubBudgetSpec] = Field(default_factory=dict, description="Per model alias.")
    downgrade: DowngradeSpec | None = Field(
        None, description="Serve a cheaper alias past a share of the budget: {at_pct, from, to}."
    )
    shadow_limit_usd: float | None = Field(
        None, ge=0,
        description="USD per period for shadow copies (policies/shadows.yaml), counted apart from limit_usd and "
        "always hard: past it copies are skipped. Default: 10 % of limit_usd.",
    )

    @model_validator(mode="after")
    def _sane(self) -> BudgetSpec:
        for value in self.alert_thresholds:
            if not 0 < value <= 100:
                raise ValueError("alert_thresholds are percentages in (0, 100]")
        if self.webhook_url and not self.webhook_url.startswith(("http://", "https://")):
            raise ValueError("webhook_url must be an http(s) URL")
        return self


TraceContent = Literal["full", "mask", "hash", "none"]


class TracingOverrideSpec(_Strict):
    """Per-alias changes to a team's tracing policy; a field left unset keeps the team's value."""

    sample_rate: float | None = Field(None, ge=0, le=1, description="Share of successful requests traced.")
    content: TraceContent | None = Field(None, description="full, mask, hash or none (see the team's).")


class TeamTracingSpec(_Strict):
    """How a team's requests are traced. Unset fields take ``tracing:`` in gateway.yaml."""

    sample_rate: float | None = Field(
        None, ge=0, le=1, description="Share of successful requests traced; failed ones are always traced."
    )
    content: TraceContent | None = Field(
        None, description="Inputs and outputs sent in full, with personal data masked ([email]...), hashed "
        "(a keyed hash per value), or none (not sent at all). API keys are never sent, whatever this says.",
    )
    aliases: dict[str, TracingOverrideSpec] = Field(
        default_factory=dict,
        description="Per-alias overrides, keyed by alias name or glob; the first matching key wins.",
    )

    def for_alias(self, alias: str) -> TracingOverrideSpec | None:
        for pattern, override in self.aliases.items():
            if fnmatch.fnmatchcase(alias, pattern):
                return override
        return None


class TeamSpec(_Strict):
    description: str = ""
    models: list[str] = Field(
        default_factory=lambda: ["*"], description="Aliases the team may call; glob patterns allowed."
    )
    prompts: list[str] = Field(default_factory=lambda: ["*"], description="Prompts the team may call (globs).")
    cache: TeamCacheSpec = Field(default_factory=TeamCacheSpec, description="The response cache policy.")
    budget: BudgetSpec | None = Field(None, description="Spending limit per period; none: unlimited.")
    data_class: str | None = Field(
        None, description="The data class of the team's requests unless raised per request; default: the lowest."
    )
    tracing: TeamTracingSpec = Field(default_factory=TeamTracingSpec, description="Trace sampling and redaction.")

    def allows_model(self, alias: str) -> bool:
        return any(fnmatch.fnmatchcase(alias, pattern) for pattern in self.models)

    def allows_prompt(self, name: str) -> bool:
        return any(fnmatch.fnmatchcase(name, pattern) for pattern in self.prompts)


class TeamsFile(_Strict):
    teams: dict[str, TeamSpec] = Field(default_factory=dict)


#: Chat parameters a prompt may fix; a caller may override those listed in ``caller_overrides``.
PROMPT_PARAMETERS = (
    "temperature", "top_p", "max_tokens", "stop", "seed", "presence_penalty", "frequency_penalty",
    "response_format", "tools", "tool_choice",
)


class PromptsPolicy(_Strict):
    """``policies/prompts.yaml``: who may move which prompt labels, and what callers may change."""

    protected_labels: list[str] = Field(
        default_factory=lambda: ["production"],
        description="Labels that move only with the approver or admin role and only to a version whose latest "
        "evaluation passed (unless forced with a reason, which is audited).",
    )
    caller_overrides: list[str] = Field(
        default_factory=lambda: ["temperature", "top_p", "max_tokens", "stop", "seed"],
        description="Parameters a caller may set to replace the prompt's own value; a caller setting any other "
        "parameter the prompt fixes gets a 400. Parameters the prompt leaves unset are always the caller's.",
    )

    @model_validator(mode="after")
    def _known_parameters(self) -> PromptsPolicy:
        unknown = sorted(set(self.caller_overrides) - set(PROMPT_PARAMETERS))
        if unknown:
            raise ValueError(f"caller_overrides: unknown parameter(s) {unknown}; known: {list(PROMPT_PARAMETERS)}")
        if "latest" in self.protected_labels:
            raise ValueError("protected_labels: 'latest' is moved by pushes only and cannot be protected")
        return self


class ClassRule(_Strict):
    """Extra conditions for a deployment to receive one class, on its ``tags``."""

    require_tags: dict[str, list[str]] = Field(
        default_factory=dict,
        description="Tag name -> accepted values; a deployment lacking any of them may not receive the class.",
    )


class DataClassesFile(_Strict):
    """``policies/data_classes.yaml``: the ordered data classes and their tag rules."""

    classes: list[str] = Field(
        default_factory=list,
        description="Data classes from lowest to highest (public, internal, ...); empty: data classes are off.",
    )
    rules: dict[str, ClassRule] = Field(default_factory=dict, description="Per class: tags a deployment needs.")

    @model_validator(mode="after")
    def _known(self) -> DataClassesFile:
        if len(set(self.classes)) != len(self.classes):
            raise ValueError("classes: a class is listed twice")
        for name in self.classes:
            if not name or len(name) > 50 or any(c.isspace() or c == "," for c in name):
                raise ValueError(f"classes: {name!r} is not a plain name (1-50 characters, no spaces)")
        unknown = sorted(set(self.rules) - set(self.classes))
        if unknown:
            raise ValueError(f"rules: unknown class(es) {unknown}; classes: {self.classes}")
        return self

class ScoringPolicy(_Strict):
    """``policies/scoring.yaml``: which live answers are scored for groundedness.

    The first match wins: a prompt's rate (by name, glob patterns allowed), then the alias'
    rate, then ``sample_rate``. A request in a running rollout is always scored, whatever the
    rates say, so that its analysis has numbers for both canary and stable.
    """

    sample_rate: float = Field(0.0, ge=0, le=1, description="Share of other requests with a context that is scored.")
    prompts: dict[str, float] = Field(default_factory=dict, description="Sample rate by prompt name (globs).")
    aliases: dict[str, float] = Field(default_factory=dict, description="Sample rate by model alias (globs).")

    @model_validator(mode="after")
    def _rates(self) -> ScoringPolicy:
        for where, rates in (("prompts", self.prompts), ("aliases", self.aliases)):
            for name, rate in rates.items():
                if not 0.0 <= rate <= 1.0:
                    raise ValueError(f"{where}.{name}: a sample rate is between 0 and 1 (got {rate})")
        return self

    def rate(self, prompt: str | None, alias: str | None) -> float:
        """The sample rate of a request for ``prompt`` (None: no prompt) on ``alias``."""
        for name, rates in ((prompt, self.prompts), (alias, self.aliases)):
            if name is None or not rates:
                continue
            found = rates.get(name)
            if found is not None:
                return found
            for pattern, rate in rates.items():
                if fnmatch.fnmatchcase(name, pattern):
                    return rate
        return self.sample_rate


class PolicyBundle(_Strict):
    """Every policy file, validated together so that cross-file references can be checked."""

    models: ModelsFile
    teams: TeamsFile
    prompts: PromptsPolicy = PromptsPolicy()
    rollouts: RolloutsFile = RolloutsFile()
    data_classes: DataClassesFile = DataClassesFile()
    scoring: ScoringPolicy = ScoringPolicy()
    shadows: ShadowsFile = ShadowsFile()


def _optional_file(path: Path, empty: PolicyFile, problems: list[str]) -> PolicyFile:
    """``path`` validated as ``empty``'s model; ``empty`` when the file does not exist or is
    wrong (its problems then go to ``problems``, so that every file's are reported together)."""
    if not path.exists():
        return empty
    try:
        return validate(type(empty), load_yaml(path))
    except ConfigError as exc:
        problems.extend(exc.problems)
        return empty


def load_policies(policies_dir: Path) -> PolicyBundle:
    """Load every policy file; all problems in all files are reported together.

    ``models.yaml`` must exist; every other file is optional and defaults to an empty policy.
    """
    problems: list[str] = []
    models = ModelsFile()
    try:
        models = validate(ModelsFile, load_yaml(policies_dir / "models.yaml"))
    except ConfigError as exc:
        problems.extend(exc.problems)
    teams = _optional_file(policies_dir / "teams.yaml", TeamsFile(), problems)
    prompts = _optional_file(policies_dir / "prompts.yaml", PromptsPolicy(), problems)
    rollouts = _optional_file(policies_dir / "rollouts.yaml", RolloutsFile(), problems)
    data_classes = _optional_file(policies_dir / "data_classes.yaml", DataClassesFile(), problems)
    scoring = _optional_file(policies_dir / "scoring.yaml", ScoringPolicy(), problems)
    shadows = _optional_file(policies_dir / "shadows.yaml", ShadowsFile(), problems)
    if problems:
        raise ConfigError(problems)
    return PolicyBundle(
        models=models, teams=teams, prompts=prompts, rollouts=rollouts, data_classes=data_classes, scoring=scoring,
        shadows=shadows,
    )
