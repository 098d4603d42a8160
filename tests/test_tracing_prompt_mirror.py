"""Prompt mirroring into Langfuse, in process: what is sent, label moves, retries that must not
create a version twice, and a claim held by another replica."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import orjson
import pytest
from prometheus_client import CollectorRegistry, Counter
from sqlalchemy import insert, select

from gateway.config.settings import TracingSettings
from gateway.storage import Database, open_database
from gateway.storage.schema import langfuse_prompt_versions, prompt_labels, prompt_versions
from gateway.testing.langfuse_receiver import LangfuseReceiver
from gateway.tracing.prompt_mirror import PromptMirror, langfuse_prompt

CHAT = {
    "name": "greet",
    "type": "chat",
    "model": "fake-chat",
    "tags": ["t"],
    "parameters": {"temperature": 0.2, "max_tokens": None},
    "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi {{ who }}"}],
}


@pytest.fixture
async def db(fresh_database_url: str) -> AsyncIterator[Database]:
    database = await open_database(fresh_database_url)
    yield database
    await database.close()


@pytest.fixture
def receiver() -> Any:
    with LangfuseReceiver() as running:
        yield running


def _mirror(db: Database, receiver: LangfuseReceiver) -> tuple[PromptMirror, CollectorRegistry]:
    registry = CollectorRegistry()
    settings = TracingSettings(
        host=receiver.url,
        public_key=receiver.public_key,
        secret_key=receiver.secret_key,
        timeout_s=0.5,
    )
    counter = Counter("mirrored", "m", ("kind", "outcome"), registry=registry)
    return PromptMirror(settings, db, mirrored=counter), registry


async def _push(db: Database, version: int, spec: dict[str, Any], labels: dict[str, int]) -> str:
    content = orjson.dumps(spec).decode()
    sha = hashlib.sha256(content.encode()).hexdigest()
    now = datetime.now(UTC)
    async with db.engine.begin() as conn:
        await conn.execute(
            insert(prompt_versions).values(
                name=spec["name"],
                version=version,
                sha256=sha,
                content=content,
                signature="s",
                key_id="k",
                author="a",
                message=f"change {version}",
                ticket=None,
                created_at=now,
            )
        )
        await conn.execute(prompt_labels.delete().where(prompt_labels.c.name == spec["name"]))
        for label, target in labels.items():
            await conn.execute(
                insert(prompt_labels).values(
                    name=spec["name"], label=label, version=target, updated_at=now, updated_by="a"
                )
            )
    return sha


def test_the_body_langfuse_takes() -> None:
    body = langfuse_prompt("greet", 3, "abc", orjson.dumps(CHAT).decode(), "why")
    assert body["type"] == "chat" and body["prompt"][1] == {"role": "user", "content": "Hi {{ who }}"}
    assert body["config"] == {
        "model": "fake-chat",
        "gateway_version": 3,
        "gateway_sha256": "abc",
        "parameters": {"temperature": 0.2},
    }
    assert body["labels"] == [] and body["tags"] == ["t"] and body["commitMessage"] == "gateway v3: why"
    text = {"name": "t", "type": "text", "model": "m", "template": "Say {{ x }}"}
    assert langfuse_prompt("t", 1, "s", orjson.dumps(text).decode(), "m")["prompt"] == "Say {{ x }}"


async def test_versions_and_label_moves_are_mirrored_in_order(db: Database, receiver: LangfuseReceiver) -> None:
    mirror, registry = _mirror(db, receiver)
    try:
        await _push(db, 1, CHAT, {"latest": 1, "production": 1})
        await _push(db, 2, {**CHAT, "tags": ["u"]}, {"latest": 2, "production": 1, "staging": 2})
        assert await mirror.sync() is True
        versions = receiver.prompts("greet")
        assert [v["config"]["gateway_version"] for v in versions] == [1, 2]
        assert mirror.langfuse_version("greet", 1) == 1 and mirror.langfuse_version("greet", 2) == 2
        assert "production" in versions[0]["labels"] and "staging" in versions[1]["labels"]
        patched = [call.body for call in receiver.calls() if call.method == "PATCH"]
        assert {"newLabels": ["latest"]} not in patched  # Langfuse moves its own "latest"
        calls = len(receiver.calls())
        assert await mirror.sync() is True and len(receiver.calls()) == calls  # nothing left to send
        assert registry.get_sample_value("mirrored_total", {"kind": "version", "outcome": "mirrored"}) == 2
    finally:
        await mirror.close()


async def test_a_retry_adopts_a_version_that_arrived_and_waits_while_langfuse_fails(
    db: Database, receiver: LangfuseReceiver
) -> None:
    mirror, registry = _mirror(db, receiver)
    try:
        sha = await _push(db, 1, CHAT, {"latest": 1})
        receiver.set_mode("error")
        assert await mirror.sync() is False
        assert mirror.langfuse_version("greet", 1) is None
        assert registry.get_sample_value("mirrored_total", {"kind": "version", "outcome": "failed"}) == 1
        # The create arrived after all (its answer was lost): Langfuse holds the content.
        receiver.set_mode("normal")
        async with httpx.AsyncClient(auth=(receiver.public_key, receiver.secret_key)) as client:
            created = await client.post(
                f"{receiver.url}/api/public/v2/prompts",
                json=langfuse_prompt("greet", 1, sha, orjson.dumps(CHAT).decode(), "x"),
            )
        created.raise_for_status()
        before = [c for c in receiver.calls() if c.method == "POST"]
        assert await mirror.sync() is True
        assert [c for c in receiver.calls() if c.method == "POST"] == before  # adopted, not created again
        assert mirror.langfuse_version("greet", 1) == 1 and len(receiver.prompts("greet")) == 1
    finally:
        await mirror.close()


async def test_a_fresh_claim_of_another_replica_is_left_alone_a_stale_one_is_taken(
    db: Database, receiver: LangfuseReceiver
) -> None:
    mirror, _ = _mirror(db, receiver)
    try:
        await _push(db, 1, CHAT, {"latest": 1})
        async with db.engine.begin() as conn:
            await conn.execute(
                insert(langfuse_prompt_versions).values(
                    name="greet", version=1, claimed_by="other:1", claimed_at=datetime.now(UTC), attempts=0
                )
            )
        await mirror.sync()
        assert receiver.prompts("greet") == []
        async with db.engine.begin() as conn:
            await conn.execute(
                langfuse_prompt_versions.update().values(claimed_at=datetime.now(UTC) - timedelta(minutes=5))
            )
        await mirror.sync()
        assert len(receiver.prompts("greet")) == 1
        async with db.engine.connect() as conn:
            row = (await conn.execute(select(langfuse_prompt_versions))).mappings().one()
        assert row["langfuse_version"] == 1 and row["claimed_by"] != "other:1"
    finally:
        await mirror.close()
