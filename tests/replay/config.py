"""What the recorded gateway is configured with: ``gateway.yaml``, the policy files, keys and prompts.

Frozen here rather than copied from the repository's ``gateway.yaml`` and ``policies/`` at run time,
so that a change to the shipped defaults on either side of a comparison cannot pass for a change
of behaviour. They are the repository's defaults (same aliases, teams and prices) adjusted for a
hermetic run: embedded SQLite, the in-process cache and budgets, every OpenAI deployment pointed at
the fake upstream, a team with the cache on, a team with no budget left, and aliases for the fault
paths (no retries, a short timeout, a dead address, a failing mock). The prompts pushed are the
copies under ``tests/replay/prompts/`` of the repository's ``prompts/support-answer`` and
``prompts/support-triage``.

Values in braces (``{upstream}``, ``{dead}``) are filled in by the recorder once it knows its ports.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Final

PROMPTS_DIR: Final = Path(__file__).resolve().parent / "prompts"

#: The fake upstream checks that the gateway sends this bearer key (``--require-key``).
PROVIDER_KEY: Final = "sk-replay-provider-key-0123456789abcdef"
#: The bootstrap admin key; never used by a request, but scrubbed like every configured secret.
ADMIN_KEY: Final = "gw-replay-admin-key-0123456789abcdef"

GATEWAY_YAML: Final[dict[str, Any]] = {
    "server": {
        "host": "127.0.0.1",
        "port": 8080,  # replaced by --port
        "workers": 1,
        "max_body_bytes": 65536,
        "access_log": True,
        "log_level": "info",
        "log_format": "json",
    },
    "storage": {"database_url": "sqlite:///gateway.db"},
    "redis": {"url": ""},
    "auth": {"admin_key": "${REPLAY_ADMIN_KEY}", "key_cache_ttl_s": 5},
    "cache": {"enabled": True, "backend": "memory"},
    "ledger": {"flush_interval_ms": 50},
    "policies_dir": "policies",
    "prompts_dir": "prompts",
    "prompts": {"signing_key_file": "prompt-signing.key"},
}

_MOCK_PRICE: Final = {"input_cost_per_token": 0.00000015, "output_cost_per_token": 0.0000006}


def _fake(model: str, **extra: Any) -> dict[str, Any]:
    """An OpenAI-compatible deployment on the fake upstream."""
    return {
        "provider": "openai",
        "base_url": "{upstream}/v1",
        "api_key": "${REPLAY_PROVIDER_KEY}",
        "model": model,
        "timeout_s": 10,
        "connect_timeout_s": 2,
        **extra,
    }


MODELS_YAML: Final[dict[str, Any]] = {
    "aliases": {
        # As shipped.
        "mock": {
            "kind": "chat",
            "description": "Built-in offline model that echoes the last user message.",
            "deployments": [{"provider": "mock", "model": "mock-1", **_MOCK_PRICE, "max_output_tokens": 4096}],
        },
        "mock-embed": {
            "kind": "embedding",
            "description": "Built-in offline embeddings.",
            "deployments": [{"provider": "mock", "model": "mock-embed-1", "free": True}],
        },
        # As shipped, with OPENAI_BASE_URL pointing at the fake upstream.
        "gpt-4o-mini": {"deployments": [_fake("gpt-4o-mini", retries=2)]},
        "gpt-4o": {"deployments": [_fake("gpt-4o", retries=2)]},
        "text-embedding-3-small": {"kind": "embedding", "deployments": [_fake("text-embedding-3-small", retries=2)]},
        "chat-default": {
            "description": "The default chat model; falls back to the built-in mock if OpenAI fails.",
            "deployments": [
                _fake("gpt-4o-mini", retries=1, weight=1),
                {"provider": "mock", "model": "mock-1", "weight": 0, **_MOCK_PRICE},
            ],
        },
        "embed-default": {"kind": "embedding", "deployments": [_fake("text-embedding-3-small")]},
        # Added for the fault paths.
        "fake-noretry": {"deployments": [_fake("gpt-4o-mini", retries=0)]},
        "fake-timeout": {"deployments": [_fake("gpt-4o-mini", retries=0, timeout_s=0.5)]},
        "dead-chat": {
            "deployments": [_fake("gpt-4o-mini", retries=0, base_url="{dead}/v1", connect_timeout_s=1)]
        },
        "mock-broken": {
            "deployments": [
                {"provider": "mock", "model": "mock-1", "retries": 0, **_MOCK_PRICE,
                 "mock": {"error_rate": 1.0, "error_status": 503}}
            ]
        },
    }
}

TEAMS_YAML: Final[dict[str, Any]] = {
    "teams": {
        # As shipped.
        "demo": {
            "description": "The quick-start team; may call everything.",
            "models": ["*"],
            "prompts": ["*"],
            "budget": {"limit_usd": 5, "period": "daily", "hard": False},
        },
        "support": {
            "description": "Customer support assistants.",
            "models": ["chat-default", "mock", "gpt-4o-mini", "embed-default", "mock-embed"],
            "prompts": ["support-*"],
            "budget": {
                "limit_usd": 500,
                "period": "monthly",
                "hard": True,
                "alert_thresholds": [50, 80, 95],
                "aliases": {"gpt-4o-mini": {"limit_usd": 300}},
            },
        },
        # Added: the response cache on, and a hard budget with nothing left.
        "cached": {
            "description": "The response cache on.",
            "models": ["*"],
            "prompts": ["*"],
            "cache": {"enabled": True, "ttl_s": 3600},
        },
        "broke": {
            "description": "A hard budget of zero: every priced request is refused.",
            "models": ["mock", "mock-embed"],
            "prompts": ["summarise"],
            "budget": {"limit_usd": 0, "period": "monthly", "hard": True},
        },
    }
}

PROMPTS_POLICY_YAML: Final[dict[str, Any]] = {
    "protected_labels": ["production"],
    "caller_overrides": ["temperature", "top_p", "max_tokens", "stop", "seed"],
}

#: Keys made with ``gateway keys create``: label -> team. ``revoked`` is revoked before the start.
KEYS: Final[dict[str, str]] = {
    "demo": "demo",
    "support": "support",
    "cached": "cached",
    "broke": "broke",
    "revoked": "demo",
}

#: ``gateway prompts push`` of each folder under PROMPTS_DIR, in this order (each becomes v1).
PROMPTS: Final = ("support-answer", "support-triage")
#: ``gateway prompts label set NAME LABEL VERSION`` after the pushes (``production`` stays unset).
LABELS: Final = (("support-answer", "staging", "1"),)
