"""Reading the cost ledger straight from storage in tests (SQLite or PostgreSQL)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import httpx
from sqlalchemy import ColumnElement, insert, select

from gateway.storage import open_database
from gateway.storage.schema import ledger


def new_key(base_url: str, admin_key: str, team: str, *roles: str) -> tuple[str, str]:
    """(key id, key) through the admin API: much faster than a ``gateway keys create`` process."""
    response = httpx.post(
        f"{base_url}/admin/keys", json={"team": team, "roles": list(roles or ("app",))},
        headers={"Authorization": f"Bearer {admin_key}"}, timeout=30,
    )
    response.raise_for_status()
    data = response.json()
    return str(data["key_id"]), str(data["key"])


async def ledger_rows(database_url: str, *where: ColumnElement[bool]) -> list[dict[str, Any]]:
    db = await open_database(database_url, run_migrations=False)
    try:
        async with db.engine.connect() as conn:
            result = await conn.execute(select(ledger).where(*where).order_by(ledger.c.id))
            return [dict(row) for row in result.mappings()]
    finally:
        await db.close()


async def wait_for_rows(
    database_url: str,
    *where: ColumnElement[bool],
    until: Callable[[list[dict[str, Any]]], bool],
    seconds: float = 15.0,
) -> list[dict[str, Any]]:
    """Poll until ``until(rows)`` holds (rows reach storage after the writer's flush interval)."""
    for _ in range(int(seconds / 0.05)):
        rows = await ledger_rows(database_url, *where)
        if until(rows):
            return rows
        await asyncio.sleep(0.05)
    return await ledger_rows(database_url, *where)


async def seed_rows(database_url: str, rows: list[dict[str, Any]]) -> None:
    """Insert ledger rows directly (defaults filled in), for report tests with known sums."""
    defaults: dict[str, Any] = {
        "key_id": "key_seed", "user": None, "alias": None, "deployment": None, "model": None,
        "prompt_name": None, "prompt_version": None, "variant": None, "kind": "request", "status": 200,
        "prompt_tokens": 0, "completion_tokens": 0, "cost_nanos": 0, "saved_nanos": 0, "latency_ms": 1.0,
        "error_code": None,
    }
    db = await open_database(database_url)
    try:
        async with db.engine.begin() as conn:
            await conn.execute(insert(ledger), [{**defaults, **row} for row in rows])
    finally:
        await db.close()
