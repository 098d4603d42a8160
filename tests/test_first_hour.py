"""A newcomer's first hour: mistakes are named when they are made, not by a bare 401 later."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from conftest import FakeHandle

from support.gateway_proc import GatewayConfig, GatewayProcess


def gateway_cli(cwd: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=60, env=env)


def test_version() -> None:
    result = gateway_cli(Path.cwd(), "--version")
    assert result.returncode == 0 and result.stdout.startswith("gateway ")


def test_a_key_for_a_team_no_policy_names_is_refused_with_the_known_teams(gateway: GatewayProcess) -> None:
    result = gateway.cli("keys", "create", "--team", "alhpa", check=False)
    assert result.returncode != 0
    assert "no policy names the team 'alhpa'" in result.stderr
    assert "known teams: alpha, beta" in result.stderr and "teams.yaml" in result.stderr
    assert "database sqlite:///" in result.stderr
    forced = gateway.cli("keys", "create", "--team", "alhpa", "--force")
    assert forced.stdout.strip().splitlines()[-1].startswith("gw-")


def test_creating_a_key_outside_the_project_folder_says_a_new_database_was_made(tmp_path: Path) -> None:
    result = gateway_cli(tmp_path, "keys", "create", "--team", "demo")
    said = " ".join(result.stderr.split())  # the console wraps long paths at its width
    assert "no database at" in said and "created a new, empty one" in said
    assert result.returncode != 0 and "no policy names the team 'demo'" in said


def test_serve_says_where_it_listens_what_it_reads_and_that_it_stopped(tmp_path: Path, fake: FakeHandle) -> None:
    proc = GatewayProcess(GatewayConfig(root=tmp_path, upstream=fake.url,
                                        database_url=f"sqlite:///{tmp_path / 'g.db'}")).start()
    proc.stop()
    log = proc.log()
    assert f"gateway: serving http://127.0.0.1:{proc.port}" in log
    assert f"config: {proc.config_path.resolve()}" in log and f"database: sqlite:///{tmp_path / 'g.db'}" in log
    assert "gateway stopped cleanly" in log


def test_a_path_outside_v1_is_an_openai_shaped_404_with_a_hint(gateway: GatewayProcess) -> None:
    response = httpx.post(f"{gateway.url}/chat/completions", json={}, timeout=30)
    assert response.status_code == 404
    error = response.json()["error"]
    assert error["code"] == "unknown_url" and "did you mean /v1/chat/completions?" in error["message"]
    other = httpx.get(f"{gateway.url}/nowhere", timeout=30)
    assert other.status_code == 404 and other.json()["error"]["code"] == "unknown_url"
    assert "did you mean" not in other.json()["error"]["message"]


def test_an_unknown_model_points_to_the_model_list(gateway: GatewayProcess, team_keys: dict[str, str]) -> None:
    headers = {"authorization": f"Bearer {team_keys['alpha']}"}
    response = httpx.post(f"{gateway.url}/v1/chat/completions", headers=headers,
                          json={"model": "gpt-9", "messages": [{"role": "user", "content": "hi"}]}, timeout=30)
    assert response.status_code == 404 and "GET /v1/models" in response.json()["error"]["message"]


@pytest.fixture
def keyless(tmp_path: Path, fake: FakeHandle) -> GatewayProcess:
    config = GatewayConfig(root=tmp_path, upstream=fake.url, database_url=f"sqlite:///{tmp_path / 'g.db'}")
    return GatewayProcess(config, env={"TEST_PROVIDER_KEY": ""})


def test_an_empty_provider_key_is_named_at_start_up_and_in_the_error(keyless: GatewayProcess) -> None:
    keyless.start()
    try:
        key = keyless.create_key("alpha")
        response = httpx.post(f"{keyless.url}/v1/chat/completions", headers={"authorization": f"Bearer {key}"},
                              json={"model": "dead-chat", "messages": [{"role": "user", "content": "hi"}]}, timeout=30)
        assert response.status_code == 503
        assert "API key of" in response.json()["error"]["message"] and "is empty" in response.json()["error"]["message"]
    finally:
        keyless.stop()
    assert "a deployment's API key is empty" in keyless.log() and '"alias":"fake-chat"' in keyless.log()


def test_config_errors_suggest_the_key_meant_and_name_the_variable(tmp_path: Path) -> None:
    (tmp_path / "gateway.yaml").write_text("server:\n  prot: 8080\n  workers: ${BAD_WORKERS}\nstorag: {}\n")
    env = {**os.environ, "BAD_WORKERS": "lots"}
    env.pop("GATEWAY_CONFIG", None)
    result = gateway_cli(tmp_path, "config", "check", env=env)
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "gateway.yaml:2: server.prot: Extra inputs are not permitted (did you mean 'port'?)" in output
    assert "storag: Extra inputs are not permitted (did you mean 'storage'?)" in output
    assert "server.workers" in output and "(the value came from ${BAD_WORKERS})" in output
