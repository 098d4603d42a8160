"""The gateway's settings: ``gateway.yaml``, parsed once into strict typed models.

Nothing else in the package reads the environment: values come in through ``${VAR}``
interpolation in the YAML file, are validated here, and the resulting ``Settings`` object is
passed explicitly to whoever needs it. Unknown keys are rejected so a typo fails start-up
instead of being silently ignored.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from gateway.config.yamlfile import ConfigError, load_yaml, validate


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ServerSettings(_Strict):
    host: str = Field("127.0.0.1", description="Address to listen on.")
    port: int = Field(8080, ge=1, le=65535, description="TCP port.")
    workers: int = Field(1, ge=1, le=64, description="uvicorn worker processes.")
    max_body_bytes: int = Field(
        4 * 1024 * 1024, ge=1024, description="Largest accepted request body; bigger bodies get 413."
    )
    access_log: bool = Field(True, description="One structured JSON log line per /v1 request.")
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["json", "text"] = "json"
    graceful_timeout_s: float = Field(10.0, ge=0, description="How long shutdown waits for in-flight work.")


class StorageSettings(_Strict):
    database_url: str = Field(
        "sqlite:///.gateway/gateway.db",
        description="sqlite:///PATH (default, zero set-up) or postgresql://USER@HOST:PORT/DB (many replicas).",
    )

    @field_validator("database_url")
    @classmethod
    def _known_scheme(cls, value: str) -> str:
        if not value.startswith(("sqlite://", "postgresql://", "postgres://", "postgresql+asyncpg://")):
            raise ValueError("must start with sqlite:// or postgresql://")
        return value


class RedisSettings(_Strict):
    url: str = Field("", description="redis://HOST:PORT/DB; empty means embedded in-process fallbacks.")
    op_timeout_ms: float = Field(50.0, gt=0, description="Per-operation timeout for fail-open features.")


class AuthSettings(_Strict):
    admin_key: SecretStr = Field(
        SecretStr(""), description="Bootstrap admin key (from GATEWAY_ADMIN_KEY); may call every endpoint."
    )
    key_cache_ttl_s: float = Field(
        5.0, ge=0, description="How long a replica trusts a looked-up key before asking storage again."
    )


class Settings(_Strict):
    """Everything ``gateway.yaml`` may say. ``base_dir`` anchors the relative paths in it."""

    base_dir: Path = Field(Path("."), exclude=True)
    server: ServerSettings = ServerSettings()
    storage: StorageSettings = StorageSettings()
    redis: RedisSettings = RedisSettings()
    auth: AuthSettings = AuthSettings()
    policies_dir: Path = Field(Path("policies"), description="Team, model, routing and budget policies.")
    prompts_dir: Path = Field(Path("prompts"), description="The prompt source repository.")

    def resolve_path(self, path: Path) -> Path:
        return path if path.is_absolute() else (self.base_dir / path)

    @property
    def database_url(self) -> str:
        url = self.storage.database_url
        if url.startswith("sqlite:///") and not url.startswith("sqlite:////"):
            # A relative SQLite path is relative to the config file, not the working directory,
            # so `gateway serve` and `gateway keys create` agree from anywhere.
            return "sqlite:///" + str(self.resolve_path(Path(url.removeprefix("sqlite:///"))))
        return url


DEFAULT_CONFIG = Path("gateway.yaml")


def config_path(explicit: str | Path | None = None) -> Path:
    """The config file: explicit argument, else ``GATEWAY_CONFIG``, else ``./gateway.yaml``."""
    if explicit:
        return Path(explicit)
    return Path(os.environ.get("GATEWAY_CONFIG") or DEFAULT_CONFIG)


def load_settings(path: str | Path | None = None) -> Settings:
    """Load and validate ``gateway.yaml``; a missing default file means all defaults."""
    resolved = config_path(path)
    if not resolved.exists():
        if path is None and not os.environ.get("GATEWAY_CONFIG"):
            return Settings(base_dir=Path.cwd())
        raise ConfigError([f"{resolved}: config file not found"])
    loaded = load_yaml(resolved)
    if not isinstance(loaded.data, dict):
        raise ConfigError([f"{resolved}:1: the config must be a mapping"])
    settings = validate(Settings, loaded)
    return settings.model_copy(update={"base_dir": resolved.resolve().parent})
