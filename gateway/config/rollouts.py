"""``policies/rollouts.yaml`` (optional): progressive rollouts of prompts and model aliases.

A rollout moves a share of the traffic of one target (a prompt label, or a model alias) to a
canary, step by step, while an analysis compares canary against stable. This module is the
edge schema only: strict pydantic, unknown keys refused, each field described. Cross-file
checks (the alias exists, the canary deployment is in range) happen when the catalog is built
(``gateway.rollouts.model.build_rollouts``).

Example::

    rollouts:
      chat-default-4o:
        description: Try gpt-4o behind chat-default.
        target:
          alias: chat-default
          canary: {alias: gpt-4o}
        steps: [{weight: 5, pause_s: 600}, {weight: 25}, {weight: 50}, {weight: 100}]
        interval_s: 60
        checks:
          - {metric: error_rate, max_over_stable: 0.02}
          - {metric: p95_ms, max_ratio_to_stable: 1.3}
        match: {teams: [support]}
"""

from __future__ import annotations

import itertools
import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

ROLLOUT_ID = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")

#: Metrics the analysis knows. Kept as a registry so that later work (hallucination rate, user
#: feedback from the tracing work) adds a name here and a source in the analysis.
METRICS: dict[str, str] = {
    "error_rate": "share of requests answered 5xx or timed out (a caller's 4xx does not count)",
    "p95_ms": "95th percentile latency in milliseconds",
    "p99_ms": "99th percentile latency in milliseconds",
    "cost_per_request": "mean cost in USD per request",
    # Measured by live scoring (gateway.scoring.quality); each needs min_samples scored answers.
    "hallucination_rate": "share of scored answers above the hallucination threshold",
    "hallucination_score": "mean hallucination score of scored answers (0 grounded .. 1 unsupported)",
}


#: Families of metrics named ``PREFIX.NAME`` (``feedback.thumbs_down``: any feedback metric).
METRIC_FAMILIES: dict[str, str] = {
    "feedback": "mean value of the feedback metric NAME posted to /v1/feedback (e.g. thumbs_down: 1 down, 0 up)",
    "langfuse": "mean value of the score NAME Langfuse's own evaluators put on the traces (pulled back)",
}


def register_metric(name: str, description: str) -> None:
    """Make ``name`` usable in ``checks`` (called at import by the module that measures it)."""
    METRICS[name] = description


def register_metric_family(prefix: str, description: str) -> None:
    """Make every ``PREFIX.NAME`` usable in ``checks``."""
    METRIC_FAMILIES[prefix] = description


def known_metric(name: str) -> bool:
    prefix, dot, rest = name.partition(".")
    return name in METRICS or (bool(dot) and bool(rest) and prefix in METRIC_FAMILIES)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CanarySpec(_Strict):
    """What the canary share is served by: exactly one of these."""

    alias: str | None = Field(None, description="Another model alias whose deployments serve the canary.")
    deployment: int | None = Field(
        None, ge=0,
        description="The index of one of the target alias' own deployments (usually weight 0): it serves the "
        "canary alone, the alias' other deployments serve stable.",
    )
    version: int | None = Field(None, ge=1, description="For a prompt target: the canary version of the prompt.")

    @model_validator(mode="after")
    def _exactly_one(self) -> CanarySpec:
        given = [name for name in ("alias", "deployment", "version") if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of alias, deployment or version (given: {given or 'none'})")
        return self


class TargetSpec(_Strict):
    """What is rolled out: a prompt label (stable = what the label serves) or a model alias
    (stable = its deployments)."""

    prompt: str | None = Field(None, description="The prompt's name; the canary is `canary.version`.")
    label: str = Field("production", description="For a prompt: the label whose traffic is split.")
    alias: str | None = Field(None, description="The model alias; the canary is `canary.alias` or `.deployment`.")
    canary: CanarySpec

    @model_validator(mode="after")
    def _one_target(self) -> TargetSpec:
        if (self.prompt is None) == (self.alias is None):
            raise ValueError("give exactly one of prompt or alias")
        if self.prompt is not None and self.canary.version is None:
            raise ValueError("a prompt rollout's canary is a version: canary: {version: N}")
        if self.alias is not None and self.canary.version is not None:
            raise ValueError("an alias rollout's canary is an alias or a deployment index, not a version")
        if self.label == "latest":
            raise ValueError("label: 'latest' moves on every push and cannot be rolled out")
        return self

    @property
    def kind(self) -> Literal["prompt", "alias"]:
        return "prompt" if self.prompt is not None else "alias"


class StepSpec(_Strict):
    weight: float = Field(..., gt=0, le=100, description="Percentage of the matching traffic sent to the canary.")
    pause_s: float = Field(
        0.0, ge=0, description="Minimum time at this step before it may advance (besides passing its checks)."
    )


class CheckSpec(_Strict):
    """A condition on one metric of the canary, absolute or relative to stable; all given bounds apply.

    ``error_rate`` with ``max_over_stable: 0.02`` reads "canary <= stable + 0.02";
    ``p95_ms`` with ``max_ratio_to_stable: 1.3`` reads "canary <= stable * 1.3".
    """

    metric: str = Field(
        ..., description="One of: " + ", ".join(METRICS) + ", or feedback.NAME (the mean of a feedback metric)."
    )
    max: float | None = Field(None, ge=0, description="Absolute bound on the canary's value.")
    max_over_stable: float | None = Field(None, ge=0, description="Canary <= stable + this.")
    max_ratio_to_stable: float | None = Field(None, gt=0, description="Canary <= stable * this.")
    threshold: float | None = Field(
        None, ge=0, le=1,
        description="For hallucination_rate: a score above it counts as hallucinated (default: the evaluator's).",
    )
    min_samples: int = Field(
        10, ge=1,
        description="For metrics from scores or feedback: the scored answers (or feedback values) each variant "
        "needs in the window; below it the check is inconclusive.",
    )

    @model_validator(mode="after")
    def _known_and_bounded(self) -> CheckSpec:
        if not known_metric(self.metric):
            known = sorted([*METRICS, *(f"{prefix}.NAME" for prefix in METRIC_FAMILIES)])
            raise ValueError(f"unknown metric {self.metric!r}; known: {known}")
        if self.max is None and self.max_over_stable is None and self.max_ratio_to_stable is None:
            raise ValueError("a check needs at least one of max, max_over_stable, max_ratio_to_stable")
        return self


def _default_checks() -> list[CheckSpec]:
    return [CheckSpec(metric="error_rate", max_over_stable=0.02), CheckSpec(metric="p95_ms", max_ratio_to_stable=1.5)]


class MatchSpec(_Strict):
    """Which requests take part; an empty list matches everything. All given lists must match."""

    teams: list[str] = Field(default_factory=list, description="Teams (globs) whose requests take part.")
    key_ids: list[str] = Field(default_factory=list, description="API key ids (key_...) whose requests take part.")
    labels: list[str] = Field(
        default_factory=list,
        description="For a prompt rollout: the labels asked for (prompt:NAME@LABEL; no label means production).",
    )


class RolloutSpec(_Strict):
    description: str = ""
    target: TargetSpec
    steps: list[StepSpec] = Field(..., min_length=1, description="Canary weights in increasing order.")
    interval_s: float = Field(60.0, gt=0, description="How often the analysis checks the canary against stable.")
    min_requests: int = Field(
        50, ge=1, description="Per variant and window; below it a check is inconclusive (neither passes nor fails)."
    )
    failure_limit: int = Field(2, ge=1, description="Failed checks in a row before the rollout is rolled back.")
    checks: list[CheckSpec] = Field(default_factory=_default_checks, description="Conditions on the canary.")
    match: MatchSpec = Field(default_factory=MatchSpec, description="Which requests take part.")
    subject_fallback: Literal["request", "key"] = Field(
        "request",
        description="Who is sticky when a request has neither a `user` field nor an x-session-id header: "
        "`request` draws per request, `key` pins the whole API key to one variant.",
    )
    webhook_url: str = Field("", description="POSTed a JSON alert when the rollout is rolled back; use ${ENV_VAR}.")
    start: Literal["auto", "manual"] = Field(
        "auto", description="auto: the rollout runs once applied; manual: it waits for `gateway rollouts start`."
    )

    @model_validator(mode="after")
    def _increasing(self) -> RolloutSpec:
        weights = [step.weight for step in self.steps]
        if any(later <= earlier for earlier, later in itertools.pairwise(weights)):
            raise ValueError(f"steps: weights must increase ({weights})")
        if self.webhook_url and not self.webhook_url.startswith(("http://", "https://")):
            raise ValueError("webhook_url must be an http(s) URL")
        return self


class RolloutsFile(_Strict):
    rollouts: dict[str, RolloutSpec] = Field(default_factory=dict, description="Rollouts by id.")

    @model_validator(mode="after")
    def _ids(self) -> RolloutsFile:
        for name in self.rollouts:
            if not ROLLOUT_ID.match(name):
                raise ValueError(f"rollout id {name!r}: lowercase letters, digits, '.', '_' and '-' (max 63)")
        return self
