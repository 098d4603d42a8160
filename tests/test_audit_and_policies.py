"""The audit log (hash chain, CLI, admin API) and `gateway policies apply` rolling a change
out to running replicas without a restart."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from pathlib import Path

import httpx
import pytest
import yaml
from conftest import FakeHandle, make_gateway
from sqlalchemy import text

from gateway.storage import open_database
from support.gateway_proc import ADMIN_KEY, GatewayProcess

MOCK = {"model": "mock", "messages": [{"role": "user", "content": "hi"}]}


def sql(database_url: str, statement: str) -> None:
    async def run() -> None:
        db = await open_database(database_url)
        try:
            async with db.engine.begin() as conn:
                await conn.execute(text(statement))
        finally:
            await db.close()

    asyncio.run(run())


def call(gateway: GatewayProcess, key: str, body: dict = MOCK) -> int:
    return httpx.post(f"{gateway.url}/v1/chat/completions", json=body,
                      headers={"Authorization": f"Bearer {key}"}).status_code


def wait_for(predicate, timeout: float = 3.0) -> float:  # type: ignore[no-untyped-def]
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if predicate():
            return time.monotonic() - started
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


@pytest.fixture
def own_gateway(tmp_path: Path, fake_upstream: FakeHandle, fresh_database_url: str):  # type: ignore[no-untyped-def]
    proc = make_gateway(tmp_path, fake_upstream.url, fresh_database_url).start()
    yield proc
    proc.stop()


def test_audit_chain_detects_edits_and_deletions(own_gateway: GatewayProcess) -> None:
    for team in ("alpha", "beta", "alpha"):
        own_gateway.create_key(team)
    every = json.loads(own_gateway.cli("audit", "list", "--format", "json").stdout)
    # The rollout controller's lease, taken at start-up, is audited too (who led, from when).
    entries = [e for e in every if e["action"] != "rollout.controller"]
    assert [e["action"] for e in entries] == ["key.create"] * 3 and len(every) - len(entries) <= 1
    assert entries[1]["after"]["team"] == "beta"
    assert all(later["prev_hash"] == earlier["hash"] for earlier, later in itertools.pairwise(every))
    assert f"ok: {len(every)} entries" in own_gateway.cli("audit", "verify").stdout

    csv_out = own_gateway.cli("audit", "list", "--format", "csv", "--action", "key.create").stdout
    assert csv_out.splitlines()[0].startswith("seq,ts,actor_key_id") and len(csv_out.splitlines()) == 4

    db = own_gateway.config.database_url
    sql(db, "UPDATE audit_log SET reason = 'nothing to see' WHERE seq = 2")
    result = own_gateway.cli("audit", "verify", check=False)
    assert result.returncode == 1 and "entry 2" in result.stderr and "edited" in result.stderr
    sql(db, "UPDATE audit_log SET reason = NULL WHERE seq = 2")
    assert own_gateway.cli("audit", "verify").returncode == 0

    sql(db, "DELETE FROM audit_log WHERE seq = 2")
    result = own_gateway.cli("audit", "verify", check=False)
    assert result.returncode == 1 and "entry 2 is missing" in result.stderr

    verdict = httpx.get(f"{own_gateway.url}/admin/audit/verify", headers={"Authorization": f"Bearer {ADMIN_KEY}"})
    assert verdict.json()["ok"] is False and verdict.json()["broken_at"] == 2


def test_audit_admin_api_filters_and_roles(own_gateway: GatewayProcess) -> None:
    app_key = own_gateway.create_key("alpha")
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    response = httpx.post(f"{own_gateway.url}/admin/keys", json={"team": "beta"}, headers=admin)
    key_id = response.json()["key_id"]
    httpx.delete(f"{own_gateway.url}/admin/keys/{key_id}", headers=admin)
    entries = httpx.get(f"{own_gateway.url}/admin/audit", params={"target": f"key:{key_id}"}, headers=admin).json()
    assert [e["action"] for e in entries] == ["key.create", "key.revoke"]
    assert entries[0]["actor_key_id"] == "admin"
    denied = httpx.get(f"{own_gateway.url}/admin/audit", headers={"Authorization": f"Bearer {app_key}"})
    assert denied.status_code == 403


def test_policies_apply_takes_effect_without_restart(own_gateway: GatewayProcess) -> None:
    beta = own_gateway.create_key("beta")
    assert call(own_gateway, beta) == 200
    first = own_gateway.cli("policies", "apply", "-m", "adopt the files")
    assert "+++ policies/teams.yaml" in first.stdout and "applied policy version 1" in first.stdout
    teams_path = own_gateway.config.root / "policies" / "teams.yaml"
    teams = yaml.safe_load(teams_path.read_text())
    teams["teams"]["beta"]["models"] = ["fake-chat"]
    teams_path.write_text(yaml.safe_dump(teams))

    dry = own_gateway.cli("policies", "apply", "--dry-run")
    assert "dry run" in dry.stdout and "\n-    - mock\n" in dry.stdout
    assert call(own_gateway, beta) == 200

    applied = own_gateway.cli("policies", "apply", "-m", "beta loses mock", "--ticket", "OPS-7")
    assert "applied policy version 2" in applied.stdout
    wait_for(lambda: call(own_gateway, beta) == 403)
    assert "no changes" in own_gateway.cli("policies", "apply").stdout

    entry = json.loads(own_gateway.cli("audit", "list", "--action", "policy.apply", "--format", "json").stdout)[-1]
    assert entry["reason"] == "beta loses mock" and entry["ticket"] == "OPS-7"
    assert "\n-    - mock\n" in entry["after"]["diff"] and entry["before"]["version"] == 1
    assert "version 2" in own_gateway.cli("policies", "status").stdout


def test_invalid_policies_are_refused_and_change_nothing(own_gateway: GatewayProcess) -> None:
    models_path = own_gateway.config.root / "policies" / "models.yaml"
    models = yaml.safe_load(models_path.read_text())
    models["aliases"]["mock"]["deployments"][0]["weight"] = -1
    models_path.write_text(yaml.safe_dump(models))
    result = own_gateway.cli("policies", "apply", check=False)
    assert result.returncode == 1 and "models.yaml:" in result.stderr and "weight" in result.stderr
    assert "nothing applied" in own_gateway.cli("policies", "status").stdout
    assert call(own_gateway, own_gateway.create_key("alpha")) == 200

    bad = httpx.post(f"{own_gateway.url}/admin/policies/apply", json={"files": {"teams.yaml": "teams: [1"}},
                     headers={"Authorization": f"Bearer {ADMIN_KEY}"})
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_policy"


def test_two_replicas_see_an_applied_change_within_a_second(
    tmp_path: Path, fake_upstream: FakeHandle, fresh_pg_url: str
) -> None:
    first = make_gateway(tmp_path / "a", fake_upstream.url, fresh_pg_url).start()
    second = make_gateway(tmp_path / "b", fake_upstream.url, fresh_pg_url).start()
    try:
        key = first.create_key("beta")
        assert call(first, key) == call(second, key) == 200
        teams = yaml.safe_load((tmp_path / "a" / "policies" / "teams.yaml").read_text())
        teams["teams"]["beta"]["models"] = ["fake-chat"]
        files = {
            "teams.yaml": yaml.safe_dump(teams),
            "models.yaml": (tmp_path / "a" / "policies" / "models.yaml").read_text(),
        }
        response = httpx.post(f"{first.url}/admin/policies/apply", json={"files": files, "reason": "tighten beta"},
                              headers={"Authorization": f"Bearer {ADMIN_KEY}"})
        assert response.status_code == 200 and response.json()["version"] == 1
        assert call(first, key) == 403  # the replica that applied it, at once
        elapsed = wait_for(lambda: call(second, key) == 403, timeout=3.0)
        assert elapsed < 1.5
        # A replica started later serves the applied policies, not its own files.
        third = make_gateway(tmp_path / "c", fake_upstream.url, fresh_pg_url).start()
        try:
            assert call(third, key) == 403
        finally:
            third.stop()
    finally:
        first.stop()
        second.stop()
