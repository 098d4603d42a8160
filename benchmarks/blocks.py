"""What the feature-cost benchmarks share (``tracing_overhead``, ``scoring_overhead``,
``shadow_overhead``): small gateways that differ in one feature, measured in alternating blocks.

Each gateway is its own ``gateway serve`` process on a SQLite file, with one team (``bench``)
and a key created through the admin API, as an operator would. The blocks rotate their order
(off, on; then on, off...), so a machine drifting between minutes shifts every variant alike;
CPU is the gateway process' own (``/proc``), per request, block by block.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

import httpx
import yaml

from benchmarks.procs import Server, free_port, start_server

T = TypeVar("T")


def one_alias(upstream: str, name: str = "gpt-4o-mini") -> dict[str, Any]:
    """``models.yaml``'s aliases: ``name`` served by ``upstream``'s OpenAI-compatible API."""
    deployment = {"provider": "openai", "base_url": f"{upstream}/v1", "model": name, "retries": 0}
    return {name: {"deployments": [deployment]}}


def start_bench_gateway(
    workdir: Path,
    name: str,
    *,
    admin_key: str,
    aliases: dict[str, Any],
    sections: dict[str, Any] | None = None,
    policies: dict[str, Any] | None = None,
) -> tuple[Server, str]:
    """A gateway in ``workdir/name``: ``sections`` added to ``gateway.yaml``, each of ``policies``
    written as ``policies/<name>.yaml``. Returns the server and team ``bench``'s key."""
    root = workdir / name
    (root / "policies").mkdir(parents=True, exist_ok=True)
    (root / "prompts").mkdir(parents=True, exist_ok=True)
    config: dict[str, Any] = {
        "server": {"host": "127.0.0.1", "access_log": True, "log_level": "warning"},
        "storage": {"database_url": f"sqlite:///{root / 'gateway.db'}"},
        "auth": {"admin_key": admin_key},
        **(sections or {}),
    }
    (root / "gateway.yaml").write_text(yaml.safe_dump(config))
    files = {"models": {"aliases": aliases}, "teams": {"teams": {"bench": {}}}, **(policies or {})}
    for file_name, content in files.items():
        (root / "policies" / f"{file_name}.yaml").write_text(yaml.safe_dump(content))
    port = free_port()
    server = start_server(
        f"gateway ({name})",
        [sys.executable, "-m", "gateway", "serve", "--config", str(root / "gateway.yaml"), "--port", str(port),
         "--workers", "1"],
        base_url=f"http://127.0.0.1:{port}", ready_path="/health/ready", log_path=root / "gateway.log",
        core=None, env={**os.environ, "GATEWAY_CONFIG": str(root / "gateway.yaml")}, cwd=root,
    )
    created = httpx.post(f"{server.base_url}/admin/keys", json={"team": "bench"},
                         headers={"Authorization": f"Bearer {admin_key}"})
    created.raise_for_status()
    return server, created.json()["key"]


@dataclass
class Blocks(Generic[T]):
    """Per gateway, block by block: CPU µs per request, and what ``ask`` returned."""

    cpu_us: dict[str, list[float]] = field(default_factory=dict)
    answers: dict[str, list[list[T]]] = field(default_factory=dict)


def alternating_blocks(
    gateways: dict[str, Server],
    ask: Callable[[str, int], T],
    *,
    blocks: int,
    requests: int,
    after_block: Callable[[str], None] | None = None,
) -> Blocks[T]:
    """``blocks`` rounds of ``requests`` calls of ``ask(name, n)`` per gateway, the order rotating
    each round. ``after_block(name)`` runs inside the block's CPU reading (let a gateway finish
    the block's background work: an export, a score)."""
    names = list(gateways)
    found: Blocks[T] = Blocks({name: [] for name in names}, {name: [] for name in names})
    for block in range(blocks):
        for name in names[block % len(names):] + names[: block % len(names)]:
            server = gateways[name]
            before = server.cpu_seconds()
            answers = [ask(name, n) for n in range(requests)]
            if after_block is not None:
                after_block(name)
            found.cpu_us[name].append((server.cpu_seconds() - before) / requests * 1e6)
            found.answers[name].append(answers)
    return found
