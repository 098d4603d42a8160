"""Promoting a model rollout rewrites the alias in the applied policies, which every replica loads."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.audit import Actor, AuditLog
from gateway.config.applied import PolicyStore, catalog_from_files
from gateway.errors import GatewayError
from gateway.rollouts.promotion import AliasPromoter, promoted_models
from gateway.storage import Database, open_database

MODELS = {
    "aliases": {
        "chat": {
            "deployments": [
                {"provider": "mock", "model": "old-a", "weight": 3},
                {"provider": "mock", "model": "old-b", "weight": 1},
                {"provider": "mock", "model": "next", "weight": 0},
            ]
        },
        "chat-next": {"deployments": [{"provider": "mock", "model": "other", "api_key": "${SOME_KEY:-}"}]},
    }
}
TEAMS = {"teams": {"t": {}}}


def rollouts(canary: dict[str, Any]) -> dict[str, Any]:
    return {"rollouts": {"ro": {"target": {"alias": "chat", "canary": canary}, "steps": [{"weight": 50}]}}}


def files(canary: dict[str, Any]) -> dict[str, str]:
    return {
        "models.yaml": yaml.safe_dump(MODELS),
        "teams.yaml": yaml.safe_dump(TEAMS),
        "rollouts.yaml": yaml.safe_dump(rollouts(canary)),
    }


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Database]:
    database = await open_database(f"sqlite:///{tmp_path / 'promo.db'}")
    yield database
    await database.close()


OPS = Actor(key_id="cli:ops", team="admin")


async def test_a_promoted_deployment_takes_the_stable_weight_and_the_others_stay_as_fallbacks(db: Database) -> None:
    store = PolicyStore(db)
    await store.apply(files({"deployment": 2}), OPS)
    rollout = catalog_from_files(files({"deployment": 2})).rollouts.by_id["ro"]
    version = await AliasPromoter(store)(rollout, OPS, reason="healthy", ticket="CHG-1")
    snapshot = await store.latest()
    assert snapshot is not None and snapshot.version == version == 2
    catalog = catalog_from_files(snapshot.files)
    deployments = catalog.aliases["chat"].deployments
    assert [(d.model, d.weight) for d in deployments] == [("old-a", 0), ("old-b", 0), ("next", 4)]
    assert snapshot.files["rollouts.yaml"] == files({"deployment": 2})["rollouts.yaml"]  # the rollout stays
    [entry] = [e for e in await AuditLog(db).list(target="policies") if e.after["version"] == 2]
    assert entry.action == "policy.apply" and entry.reason == "healthy" and entry.ticket == "CHG-1"
    assert "weight: 4" in entry.after["diff"]
    # Promoting again changes nothing (the alias already serves the canary).
    assert await AliasPromoter(store)(rollout, OPS, reason=None, ticket=None) is None


async def test_a_promoted_canary_alias_gives_the_alias_its_deployments(db: Database) -> None:
    store = PolicyStore(db)
    await store.apply(files({"alias": "chat-next"}), OPS)
    rollout = catalog_from_files(files({"alias": "chat-next"})).rollouts.by_id["ro"]
    await AliasPromoter(store)(rollout, OPS, reason=None, ticket=None)
    snapshot = await store.latest()
    assert snapshot is not None
    rewritten = yaml.safe_load(snapshot.files["models.yaml"])
    assert rewritten["aliases"]["chat"]["deployments"] == MODELS["aliases"]["chat-next"]["deployments"]
    assert rewritten["aliases"]["chat-next"] == MODELS["aliases"]["chat-next"]  # the placeholder kept, not a secret
    assert [d.model for d in catalog_from_files(snapshot.files).aliases["chat"].deployments] == ["other"]


async def test_nothing_applied_or_a_vanished_alias_is_refused(db: Database) -> None:
    rollout = catalog_from_files(files({"deployment": 2})).rollouts.by_id["ro"]
    with pytest.raises(GatewayError) as caught:
        await AliasPromoter(PolicyStore(db))(rollout, OPS, reason=None, ticket=None)
    assert caught.value.code == "policies_not_applied"
    with pytest.raises(GatewayError) as caught:
        promoted_models({"aliases": {}}, rollout)
    assert caught.value.code == "rollout_target_missing"
