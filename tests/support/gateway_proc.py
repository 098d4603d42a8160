"""Running the real gateway for tests: a config directory and a ``gateway serve`` process.

Tests talk to a gateway the way users do: a separate process started by the CLI, on a free
port, configured by files, called over HTTP with real clients.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

from support.ledger import new_key

REPO = Path(__file__).resolve().parents[2]
ADMIN_KEY = "gw-test-admin-key-0123456789"
PROVIDER_KEY = "sk-upstream-secret-provider-key-42"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def default_models(upstream: str) -> dict[str, Any]:
    """Aliases pointing at the fake upstream, plus a dead one and a fallback pair."""
    fake = {
        "provider": "openai",
        "base_url": f"{upstream}/v1",
        "api_key": "${TEST_PROVIDER_KEY}",
        "timeout_s": 5,
        "connect_timeout_s": 1,
        "retries": 0,
    }
    dead = {**fake, "base_url": f"http://127.0.0.1:{free_port()}/v1"}
    return {
        "aliases": {
            "fake-chat": {"deployments": [{**fake, "model": "gpt-4o-mini"}]},
            "fake-embed": {"kind": "embedding", "deployments": [{**fake, "model": "text-embedding-3-small"}]},
            "fake-retry": {"deployments": [{**fake, "model": "gpt-4o-mini", "retries": 2}]},
            "fallback-chat": {
                "deployments": [
                    {**dead, "model": "gpt-4o-mini", "weight": 1},
                    {**fake, "model": "gpt-4o", "weight": 0},
                ]
            },
            "dead-chat": {"deployments": [{**dead, "model": "gpt-4o-mini"}]},
            "mock": {
                "deployments": [
                    {"provider": "mock", "model": "mock-1", "input_cost_per_token": 1.5e-7,
                     "output_cost_per_token": 6e-7}
                ]
            },
            "mock-embed": {"kind": "embedding", "deployments": [{"provider": "mock", "model": "m", "free": True}]},
        }
    }


def default_teams() -> dict[str, Any]:
    return {
        "teams": {
            "alpha": {"models": ["*"], "prompts": ["*"]},
            "beta": {"models": ["fake-chat", "mock"], "prompts": ["*"]},
        }
    }


@dataclass
class GatewayConfig:
    root: Path
    upstream: str
    database_url: str
    redis_url: str = ""
    models: dict[str, Any] = field(default_factory=dict)
    teams: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def write(self) -> Path:
        (self.root / "policies").mkdir(parents=True, exist_ok=True)
        (self.root / "prompts").mkdir(parents=True, exist_ok=True)
        config = {
            "server": {"host": "127.0.0.1", "port": 8080, "max_body_bytes": 65536, "log_level": "info"},
            "storage": {"database_url": self.database_url},
            "redis": {"url": self.redis_url},
            "auth": {"admin_key": "${GATEWAY_ADMIN_KEY}", "key_cache_ttl_s": 1},
            **self.extra,
        }
        (self.root / "gateway.yaml").write_text(yaml.safe_dump(config))
        (self.root / "policies" / "models.yaml").write_text(
            yaml.safe_dump(self.models or default_models(self.upstream))
        )
        (self.root / "policies" / "teams.yaml").write_text(yaml.safe_dump(self.teams or default_teams()))
        return self.root / "gateway.yaml"


class GatewayProcess:
    """``gateway serve`` in a subprocess, stopped with SIGTERM (graceful) or SIGKILL."""

    def __init__(self, config: GatewayConfig, *, workers: int = 1, env: dict[str, str] | None = None) -> None:
        self.config = config
        self.config_path = config.write()
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = config.root / f"gateway-{self.port}.log"
        self.env = {
            **os.environ,
            "GATEWAY_ADMIN_KEY": ADMIN_KEY,
            "TEST_PROVIDER_KEY": PROVIDER_KEY,
            "GATEWAY_CONFIG": str(self.config_path),
            **(env or {}),
        }
        self.workers = workers
        self.proc: subprocess.Popen[bytes] | None = None

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run a ``gateway`` CLI command against this gateway's config."""
        return subprocess.run(
            [sys.executable, "-m", "gateway", *args], env=self.env, cwd=self.config.root,
            capture_output=True, text=True, check=check, timeout=60,
        )

    def create_key(self, team: str, *roles: str) -> str:
        """A key for ``team``: through the admin API once the gateway runs, else the CLI.

        Both are operators' ways (``gateway keys create`` has its own tests); the API costs ~10 ms,
        the CLI a fresh interpreter (~1 s of CPU under coverage), once per key.
        """
        if self.proc is not None and self.proc.poll() is None:
            return new_key(self.url, self.env["GATEWAY_ADMIN_KEY"], team, *roles)[1]
        role_args = [arg for role in roles for arg in ("--role", role)]
        result = self.cli("keys", "create", "--team", team, *role_args)
        return result.stdout.strip().splitlines()[-1]

    def start(self, timeout: float = 60.0) -> GatewayProcess:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gateway", "serve", "--port", str(self.port), "--workers", str(self.workers)],
            env=self.env, cwd=self.config.root, stdout=log, stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gateway exited with {self.proc.returncode}:\n{self.log()}")
            try:
                if httpx.get(f"{self.url}/health/ready", timeout=0.5).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"gateway did not become ready:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(5)

    def kill(self) -> None:
        self.stop(signal.SIGKILL)
