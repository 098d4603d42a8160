"""Policy files under ``policies/``: model aliases (``models.yaml``) and teams (``teams.yaml``).

These are the edge models: strict pydantic schemas with a description per field, validated
with file and line in every error. The request path never sees them; ``gateway.catalog``
turns them into plain runtime objects once per load.
"""

from __future__ import annotations

import fnmatch
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from gateway.config.yamlfile import ConfigError, load_yaml, validate


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class MockBehaviour(_Strict):
    """How the built-in ``mock`` provider behaves: latency and injected failures."""

    latency_ms: float = Field(0.0, ge=0, description="Delay before the answer (and between stream chunks / 10).")
    error_rate: float = Field(0.0, ge=0, le=1, description="Share of calls that fail with error_status.")
    error_status: int = Field(500, ge=400, le=599)
    stream_chunks: int = Field(8, ge=1, le=4096, description="Content chunks in a streamed answer.")


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
    retries: int = Field(1, ge=0, le=10, description="Retries on this deployment before falling back.")
    weight: float = Field(1.0, ge=0, description="Share of traffic among this alias' deployments.")
    input_cost_per_token: float | None = Field(None, ge=0, description="USD; default from litellm's price map.")
    output_cost_per_token: float | None = Field(None, ge=0, description="USD; default from litellm's price map.")
    price_model: str | None = Field(None, description="Name to look up in the price map, if not `model`.")
    free: bool = Field(False, description="Explicitly free: no price needed (local models, mock).")
    max_output_tokens: int | None = Field(None, gt=0, description="Default from the price map.")
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


class ModelsFile(_Strict):
    aliases: dict[str, AliasSpec] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _names_are_plain(self) -> ModelsFile:
        for name in self.aliases:
            if name.startswith("prompt:") or not name or any(c.isspace() for c in name):
                raise ValueError(f"alias name {name!r} is reserved or contains spaces")
        return self


class TeamSpec(_Strict):
    description: str = ""
    models: list[str] = Field(
        default_factory=lambda: ["*"], description="Aliases the team may call; glob patterns allowed."
    )
    prompts: list[str] = Field(default_factory=lambda: ["*"], description="Prompts the team may call (globs).")

    def allows_model(self, alias: str) -> bool:
        return any(fnmatch.fnmatchcase(alias, pattern) for pattern in self.models)

    def allows_prompt(self, name: str) -> bool:
        return any(fnmatch.fnmatchcase(name, pattern) for pattern in self.prompts)


class TeamsFile(_Strict):
    teams: dict[str, TeamSpec] = Field(default_factory=dict)


class PolicyBundle(_Strict):
    """Every policy file, validated together so that cross-file references can be checked."""

    models: ModelsFile
    teams: TeamsFile


def load_policies(policies_dir: Path) -> PolicyBundle:
    """Load every policy file; all problems in all files are reported together."""
    problems: list[str] = []
    models = ModelsFile()
    teams = TeamsFile()
    models_path = policies_dir / "models.yaml"
    teams_path = policies_dir / "teams.yaml"
    try:
        models = validate(ModelsFile, load_yaml(models_path))
    except ConfigError as exc:
        problems.extend(exc.problems)
    if teams_path.exists():
        try:
            teams = validate(TeamsFile, load_yaml(teams_path))
        except ConfigError as exc:
            problems.extend(exc.problems)
    if problems:
        raise ConfigError(problems)
    return PolicyBundle(models=models, teams=teams)
