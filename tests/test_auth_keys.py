"""The key store's cache against real storage: one lookup per key however many requests ask at
once, refresh ahead of expiry without making anyone wait, and revocation that is never undone
by a lookup that raced it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import event

from gateway.auth import KeyStore
from gateway.storage import Database, open_database


@pytest.fixture
async def db(fresh_database_url: str) -> AsyncIterator[Database]:
    database = await open_database(fresh_database_url)
    yield database
    await database.close()


class KeyQueries:
    """Counts the statements storage really executes against the api_keys table."""

    def __init__(self, db: Database) -> None:
        self.count = 0
        event.listen(db.engine.sync_engine, "before_cursor_execute", self._seen)

    def _seen(self, _conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if statement.lstrip().upper().startswith("SELECT") and "api_keys" in statement:
            self.count += 1


async def test_concurrent_requests_for_an_uncached_key_share_one_lookup(db: Database) -> None:
    store = KeyStore(db, cache_ttl_s=5.0)
    created = await store.create("team-a")
    store.invalidate()
    queries = KeyQueries(db)
    principals = await asyncio.gather(*(store.authenticate(created.secret) for _ in range(50)))
    assert {p.team if p else None for p in principals} == {"team-a"}
    assert queries.count == 1
    assert await store.authenticate(created.secret) is principals[0]
    assert queries.count == 1, "served from the cache"


async def test_a_cancelled_caller_does_not_cancel_the_shared_lookup(db: Database) -> None:
    store = KeyStore(db, cache_ttl_s=5.0)
    created = await store.create("team-a")
    store.invalidate()
    first = asyncio.ensure_future(store.authenticate(created.secret))
    second = asyncio.ensure_future(store.authenticate(created.secret))
    await asyncio.sleep(0)
    first.cancel()
    principal = await second
    assert principal is not None and principal.team == "team-a"
    assert first.cancelled()


async def test_refresh_ahead_serves_the_cached_key_and_looks_it_up_once_in_the_background(db: Database) -> None:
    store = KeyStore(db, cache_ttl_s=0.4)
    created = await store.create("team-a")
    store.invalidate()
    queries = KeyQueries(db)
    assert await store.authenticate(created.secret) is not None
    assert queries.count == 1
    await asyncio.sleep(0.32)  # past the refresh point (75 % of the TTL), before expiry
    answers = await asyncio.gather(*(store.authenticate(created.secret) for _ in range(20)))
    assert all(p is not None for p in answers), "answered from the cache while refreshing"
    for _ in range(100):
        if queries.count == 2:
            break
        await asyncio.sleep(0.01)
    assert queries.count == 2, "one background refresh for twenty requests"
    await asyncio.sleep(0.15)  # the original entry's expiry: the refreshed one still holds
    assert await store.authenticate(created.secret) is not None
    assert queries.count == 2


async def test_a_revoked_key_stops_working_at_the_latest_after_the_ttl(db: Database) -> None:
    replica = KeyStore(db, cache_ttl_s=0.3)  # another replica: it is not told about the revoke
    admin = KeyStore(db, cache_ttl_s=0.3)
    created = await admin.create("team-a")
    assert await replica.authenticate(created.secret) is not None
    assert await admin.revoke(created.record.key_id)
    assert await admin.authenticate(created.secret) is None, "the revoking replica knows at once"
    await asyncio.sleep(0.35)
    assert await replica.authenticate(created.secret) is None


async def test_a_lookup_racing_a_revoke_is_not_cached(db: Database) -> None:
    store = KeyStore(db, cache_ttl_s=60.0)
    created = await store.create("team-a")
    store.invalidate()
    release = asyncio.Event()
    query = store._query

    async def slow_query(digest: str) -> Any:
        principal = await query(digest)  # reads the key before the revoke commits
        await release.wait()
        return principal

    store._query = slow_query  # type: ignore[method-assign]
    racing = asyncio.ensure_future(store.authenticate(created.secret))
    await asyncio.sleep(0.05)
    store._query = query  # type: ignore[method-assign]
    assert await store.revoke(created.record.key_id)
    release.set()
    assert (await racing) is not None, "the racing request itself was admitted before the revoke"
    assert await store.authenticate(created.secret) is None, "but its stale answer was not cached"


async def test_unknown_keys_are_cached_briefly(db: Database) -> None:
    store = KeyStore(db, cache_ttl_s=5.0)
    queries = KeyQueries(db)
    for _ in range(10):
        assert await store.authenticate("gw-not-a-key") is None
    assert queries.count == 1
