"""Helpers for the response-cache tests: team policies, keys through the admin API, requests."""

from __future__ import annotations

import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

from support.gateway_proc import ADMIN_KEY, GatewayConfig, GatewayProcess
from support.ledger import new_key

ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}


def cache_teams() -> dict[str, Any]:
    """Teams covering every cache policy the server tests need."""
    on = {"enabled": True}
    return {
        "teams": {
            "alpha": {"cache": {**on, "aliases": {"fake-retry": {"enabled": False}}}},
            "beta": {"cache": on},
            "gamma": {"cache": {**on, "share_scope": "gd"}},
            "delta": {"cache": {**on, "share_scope": "gd"}},
            "plain": {},  # the default: cache off
            "tiny": {"cache": {**on, "max_entry_bytes": 200}},
            "sampler": {"cache": {**on, "cache_nondeterministic": True}},
            "brief": {"cache": {**on, "ttl_s": 1, "aliases": {"mock": {"ttl_s": 60}}}},
            # A budget of nothing: every request that reaches the budget stage is refused.
            "broke": {"cache": {**on, "share_scope": "thrift"}, "budget": {"limit_usd": 0, "period": "daily"}},
            "payer": {"cache": {**on, "share_scope": "thrift"}},
        }
    }


def start_gateway(
    root: Path, upstream: str, *, redis_url: str = "", cache: dict[str, Any] | None = None,
    redis: dict[str, Any] | None = None,
) -> GatewayProcess:
    extra: dict[str, Any] = {}
    if cache is not None:
        extra["cache"] = cache
    config = GatewayConfig(
        root=root, upstream=upstream, database_url=f"sqlite:///{root / 'gateway.db'}", redis_url=redis_url,
        teams=cache_teams(), extra=extra,
    )
    if redis is not None:
        config.extra["redis"] = {"url": redis_url, **redis}
    return GatewayProcess(config).start(timeout=60)  # start-up is slow on a busy CI machine


def create_key(gateway_url: str, team: str, *roles: str) -> str:
    return new_key(gateway_url, ADMIN_KEY, team, *roles)[1]


def unique_question() -> str:
    """Content no other test sends, so tests sharing a store never see each other's entries."""
    return f"What is the colour of {uuid.uuid4().hex}?"


def chat_body(question: str, **params: Any) -> dict[str, Any]:
    return {"model": "fake-chat", "messages": [{"role": "user", "content": question}], "temperature": 0, **params}


def post_chat(url: str, key: str, body: dict[str, Any], **headers: str) -> httpx.Response:
    return httpx.post(
        f"{url}/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}", **headers}, timeout=30
    )


def content_of(response: httpx.Response) -> str:
    return str(response.json()["choices"][0]["message"]["content"])


def wait_for(condition: Any, timeout: float = 10.0, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(interval)


def run_cli(gateway: GatewayProcess, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return gateway.cli("cache", *args, check=check)
