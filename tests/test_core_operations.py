"""Operating the gateway: keys (CLI and admin API, on both storage backends), config
checks with file and line, health, metrics, and the serve command's options."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai
import pytest
from conftest import FakeHandle

from support.gateway_proc import ADMIN_KEY, GatewayConfig, GatewayProcess, default_models, free_port

CHAT = {"model": "fake-chat", "messages": [{"role": "user", "content": "hi"}]}


def chat(gateway: GatewayProcess, key: str) -> httpx.Response:
    return httpx.post(f"{gateway.url}/v1/chat/completions", json=CHAT, headers={"Authorization": f"Bearer {key}"})


def test_key_lifecycle_through_the_cli(backend_gateway: GatewayProcess, fake: FakeHandle) -> None:
    result = backend_gateway.cli("keys", "create", "--team", "alpha", "--role", "app", "--name", "ci")
    key = result.stdout.strip().splitlines()[-1]
    assert key.startswith("gw-") and len(key) > 40
    assert chat(backend_gateway, key).status_code == 200

    listing = backend_gateway.cli("keys", "list", "--team", "alpha", "--format", "json").stdout
    key_id = next(k["key_id"] for k in json.loads(listing) if k["name"] == "ci")
    assert key not in listing, "the key itself is never shown again"
    assert key_id in backend_gateway.cli("keys", "list").stdout

    backend_gateway.cli("keys", "revoke", key_id)
    time.sleep(1.2)  # the test config trusts a looked-up key for 1 s
    assert chat(backend_gateway, key).status_code == 401
    assert backend_gateway.cli("keys", "revoke", key_id, check=False).returncode == 1


def test_keys_are_stored_only_as_hashes(backend_gateway: GatewayProcess) -> None:
    key = backend_gateway.create_key("alpha")
    import asyncio

    from sqlalchemy import text

    from gateway.storage import open_database

    async def dump() -> str:
        db = await open_database(backend_gateway.config.database_url)
        try:
            async with db.engine.connect() as conn:
                rows = (await conn.execute(text("SELECT * FROM api_keys"))).all()
        finally:
            await db.close()
        return repr(rows)

    stored = asyncio.run(dump())
    assert key not in stored and key[3:] not in stored


def test_admin_keys_api(backend_gateway: GatewayProcess, fake: FakeHandle) -> None:
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    created = httpx.post(f"{backend_gateway.url}/admin/keys", json={"team": "beta", "roles": ["app"]}, headers=admin)
    assert created.status_code == 201, created.text
    key = created.json()["key"]
    assert chat(backend_gateway, key).status_code == 200
    listed = httpx.get(f"{backend_gateway.url}/admin/keys", params={"team": "beta"}, headers=admin).json()
    assert created.json()["key_id"] in {k["key_id"] for k in listed}
    assert all("key" not in k for k in listed)
    # An app key cannot manage keys.
    denied = httpx.get(f"{backend_gateway.url}/admin/keys", headers={"Authorization": f"Bearer {key}"})
    assert denied.status_code == 403 and denied.json()["error"]["code"] == "insufficient_role"
    bad_role = httpx.post(f"{backend_gateway.url}/admin/keys", json={"team": "beta", "roles": ["king"]}, headers=admin)
    assert bad_role.status_code == 400 and "king" in bad_role.json()["error"]["message"]
    revoked = httpx.delete(f"{backend_gateway.url}/admin/keys/{created.json()['key_id']}", headers=admin)
    assert revoked.status_code == 204
    again = httpx.delete(f"{backend_gateway.url}/admin/keys/{created.json()['key_id']}", headers=admin)
    assert again.status_code == 404


def test_admin_key_from_environment_calls_everything(gateway: GatewayProcess, fake: FakeHandle) -> None:
    client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=ADMIN_KEY, max_retries=0)
    assert client.chat.completions.create(**CHAT).choices[0].message.content == "Mock answer: hi"


def test_health_endpoints(gateway: GatewayProcess) -> None:
    assert httpx.get(f"{gateway.url}/health/live").json() == {"status": "ok"}
    ready = httpx.get(f"{gateway.url}/health/ready").json()
    assert ready["status"] == "ready" and ready["checks"]["storage"] == "ok"


def test_metrics(gateway: GatewayProcess, team_keys: dict[str, str], fake: FakeHandle) -> None:
    assert chat(gateway, team_keys["alpha"]).status_code == 200
    httpx.post(f"{gateway.url}/v1/chat/completions", json={**CHAT, "model": "random-name-xyz"},
               headers={"Authorization": f"Bearer {team_keys['alpha']}"})
    text = httpx.get(f"{gateway.url}/metrics").text
    assert 'gateway_requests_total{model="fake-chat",status="200",team="alpha"}' in text
    assert "gateway_overhead_seconds_bucket" in text
    assert "gateway_upstream_duration_seconds_bucket" in text
    assert 'gateway_tokens_total{direction="input",model="fake-chat",team="alpha"}' in text
    assert "gateway_in_flight_requests" in text
    # Unknown model names from callers never become label values.
    assert "random-name-xyz" not in text


def test_request_id_is_propagated(gateway: GatewayProcess, team_keys: dict[str, str], fake: FakeHandle) -> None:
    response = httpx.post(f"{gateway.url}/v1/chat/completions", json=CHAT,
                          headers={"Authorization": f"Bearer {team_keys['alpha']}", "x-request-id": "trace-abc-123"})
    assert response.headers["x-request-id"] == "trace-abc-123"
    hostile = httpx.post(f"{gateway.url}/v1/chat/completions", json=CHAT,
                         headers={"Authorization": f"Bearer {team_keys['alpha']}", "x-request-id": "a b\"c"})
    assert hostile.headers["x-request-id"] != 'a b"c'


def test_json_logs_carry_the_request_id(gateway: GatewayProcess, team_keys: dict[str, str], fake: FakeHandle) -> None:
    response = chat(gateway, team_keys["alpha"])
    request_id = response.headers["x-request-id"]
    deadline = time.monotonic() + 5
    while request_id not in gateway.log() and time.monotonic() < deadline:
        time.sleep(0.05)
    lines = [json.loads(line) for line in gateway.log().splitlines() if request_id in line]
    assert lines and lines[0]["request_id"] == request_id and lines[0]["team"] == "alpha"


def _run_cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway", *args, "--config", str(config)],
                          capture_output=True, text=True, timeout=60)


def test_config_check_reports_file_and_line(tmp_path: Path) -> None:
    config = GatewayConfig(root=tmp_path, upstream="http://127.0.0.1:1", database_url="sqlite:///x.db").write()
    assert _run_cli(config, "config", "check").returncode == 0

    models = tmp_path / "policies" / "models.yaml"
    models.write_text(
        "aliases:\n"
        "  good:\n"
        "    deployments:\n"
        "      - provider: mock\n"
        "        model: m\n"
        "  bad:\n"
        "    deployments:\n"
        "      - provider: openai\n"
        "        base_url: http://x/v1\n"
        "        model: some-unpriced-model\n"
        "        timeout_s: soon\n"
    )
    result = _run_cli(config, "config", "check")
    assert result.returncode == 1
    assert f"{models}:11: aliases.bad.deployments.0.timeout_s" in result.stderr, result.stderr

    models.write_text("aliases:\n  x: [unclosed\n")
    result = _run_cli(config, "config", "check")
    assert result.returncode == 1 and "invalid YAML" in result.stderr and f"{models}:" in result.stderr

    models.write_text(
        "aliases:\n  x:\n    deployments:\n      - provider: openai\n        base_url: http://x/v1\n"
        "        model: my-private-model\n"
    )
    result = _run_cli(config, "config", "check")
    assert result.returncode == 1 and "no price for model 'my-private-model'" in result.stderr

    (tmp_path / "gateway.yaml").write_text("server:\n  port: 99999\n  colour: blue\n")
    result = _run_cli(config, "config", "check")
    assert result.returncode == 1
    assert "gateway.yaml:2: server.port" in result.stderr and "gateway.yaml:3: server.colour" in result.stderr


def test_config_interpolates_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from gateway.config.settings import load_settings

    (tmp_path / "gateway.yaml").write_text(
        "server:\n  port: ${TEST_GW_PORT:-9000}\nredis:\n  url: ${TEST_GW_REDIS}\n"
    )
    monkeypatch.delenv("TEST_GW_PORT", raising=False)
    monkeypatch.setenv("TEST_GW_REDIS", "redis://h:1/0#not-a-comment")
    settings = load_settings(tmp_path / "gateway.yaml")
    assert settings.server.port == 9000 and settings.redis.url == "redis://h:1/0#not-a-comment"
    monkeypatch.setenv("TEST_GW_PORT", "9100")
    assert load_settings(tmp_path / "gateway.yaml").server.port == 9100


def test_models_list_cli(gateway: GatewayProcess) -> None:
    output = gateway.cli("models", "list").stdout
    assert "fake-chat" in output and "fallback-chat" in output


def test_serve_refuses_a_bad_config(tmp_path: Path) -> None:
    config = GatewayConfig(root=tmp_path, upstream="http://127.0.0.1:1", database_url="sqlite:///x.db",
                           models={"aliases": {"x": {"deployments": [{"provider": "openai", "model": "gpt-4o"}]}}})
    path = config.write()
    result = _run_cli(path, "serve")
    assert result.returncode == 1 and "base_url" in result.stderr


def test_a_start_up_failure_says_why_before_uvicorn_gives_up(tmp_path: Path) -> None:
    # Storage that refuses connections: start-up fails inside the worker. The reason is logged
    # through the writer thread and must reach stderr, ahead of uvicorn's generic message.
    path = GatewayConfig(root=tmp_path, upstream="http://127.0.0.1:1",
                         database_url="postgresql://nobody@127.0.0.1:1/none").write()
    result = _run_cli(path, "serve", "--port", str(free_port()))
    assert result.returncode != 0
    lines = result.stderr.splitlines()
    reason = next(i for i, line in enumerate(lines) if '"start-up failed"' in line)
    entry = json.loads(lines[reason])
    assert entry["level"] == "error" and "Connection refused" in entry["exc"]
    assert reason < next(i for i, line in enumerate(lines) if "Application startup failed" in line)


def test_multiple_workers_share_metrics(tmp_path: Path, fake_upstream: FakeHandle, redis_url: str) -> None:
    """Counters are summed over the workers, and the series computed at scrape time (a budget's
    used ratio, from Redis) are there too: with several workers they once went missing."""
    import redis

    redis.Redis.from_url(redis_url).flushdb()
    teams = {"teams": {"alpha": {"models": ["*"], "prompts": ["*"],
                                 "budget": {"limit_usd": 1000, "period": "monthly", "hard": True}}}}
    proc = GatewayProcess(
        GatewayConfig(root=tmp_path, upstream=fake_upstream.url, database_url=f"sqlite:///{tmp_path / 'g.db'}",
                      models=default_models(fake_upstream.url), teams=teams, redis_url=redis_url),
        workers=2,
    ).start()
    try:
        key = proc.create_key("alpha")
        for _ in range(20):
            assert chat(proc, key).status_code == 200
        time.sleep(1.0)  # settles are batched
        for _ in range(4):  # whichever worker answers the scrape
            text = httpx.get(f"{proc.url}/metrics").text
            line = next(line for line in text.splitlines()
                        if line.startswith('gateway_requests_total{model="fake-chat",status="200",team="alpha"}'))
            assert float(line.rsplit(" ", 1)[1]) == 20.0
            ratio = next(line for line in text.splitlines()
                         if line.startswith('gateway_budget_used_ratio{scope="team",team="alpha"}'))
            assert 0 < float(ratio.rsplit(" ", 1)[1]) < 1
    finally:
        proc.stop()
