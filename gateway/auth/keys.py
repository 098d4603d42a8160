"""API keys: created once, shown once, stored only as a sha256 hash.

Keys are 256-bit random tokens, so a plain (unsalted) sha256 is enough: there is no
password to brute-force, and a fast hash keeps the lookup off the request's critical path.
Looked-up keys are cached per replica for ``key_cache_ttl_s``, which bounds how long a
revoked key keeps working on a replica that has not been told (the admin API tells its own
replica at once).

The cache is refreshed ahead of expiry, by one background lookup per key, while the cached
answer keeps being served; a key that did expire (idle for a while) is looked up once however
many requests carry it at that moment. Without both, every busy key's expiry sent all its
in-flight requests to the database together (at c=64, 64 queries and a burst of new SQLite
connections every TTL), which showed as the gateway's worst latency spikes.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import insert, select, update

from gateway.audit import Actor, AuditLog
from gateway.storage import Database
from gateway.storage.schema import api_keys

log = logging.getLogger("gateway.auth")

ROLES = ("app", "author", "approver", "finance", "admin")
_BAD_KEY_TTL_S = 1.0  # unknown keys are remembered briefly: a client hammering with one is not a query each
_REFRESH_AHEAD = 0.25  # refresh a key in the last quarter of its cache lifetime
KEY_PREFIX = "gw-"


@dataclass(frozen=True, slots=True)
class Principal:
    key_id: str
    team: str
    roles: frozenset[str]

    @property
    def is_admin(self) -> bool:
        return "admin" in self.roles

    def has_role(self, *roles: str) -> bool:
        return self.is_admin or any(role in self.roles for role in roles)


@dataclass(frozen=True, slots=True)
class KeyRecord:
    key_id: str
    prefix: str
    team: str
    roles: tuple[str, ...]
    name: str
    created_at: datetime
    revoked_at: datetime | None


@dataclass(frozen=True, slots=True)
class CreatedKey:
    record: KeyRecord
    secret: str  # the only time the key itself exists outside the caller's hands


def hash_key(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _parse_roles(value: str) -> tuple[str, ...]:
    return tuple(role for role in value.split(",") if role)


class KeyStore:
    def __init__(self, db: Database, *, admin_key: str = "", cache_ttl_s: float = 5.0) -> None:
        self._db = db
        self._audit = AuditLog(db)
        self._admin_hash = hash_key(admin_key) if admin_key else None
        self._ttl = cache_ttl_s
        # digest -> (principal or None for an unknown/revoked key, refresh after, expires at)
        self._cache: dict[str, tuple[Principal | None, float, float]] = {}
        self._lookups: dict[str, asyncio.Task[Principal | None]] = {}  # single-flight per digest
        self._refreshing: set[asyncio.Task[None]] = set()
        self._generation = 0  # bumped by invalidate(): lookups begun before it are not cached

    async def create(
        self, team: str, roles: tuple[str, ...] = ("app",), name: str = "", *, actor: Actor | None = None
    ) -> CreatedKey:
        unknown = [role for role in roles if role not in ROLES]
        if unknown:
            raise ValueError(f"unknown role(s): {', '.join(unknown)}; known: {', '.join(ROLES)}")
        if not team or not team.strip():
            raise ValueError("a key needs a team")
        secret = KEY_PREFIX + secrets.token_urlsafe(32)
        record = KeyRecord(
            key_id="key_" + secrets.token_hex(6),
            prefix=secret[:10],
            team=team,
            roles=tuple(dict.fromkeys(roles)),
            name=name,
            created_at=datetime.now(UTC),
            revoked_at=None,
        )
        async with self._db.engine.begin() as conn:
            await conn.execute(
                insert(api_keys).values(
                    key_id=record.key_id,
                    key_hash=hash_key(secret),
                    prefix=record.prefix,
                    team=team,
                    roles=",".join(record.roles),
                    name=name,
                    created_at=record.created_at,
                    revoked=False,
                )
            )
        await self._audit.append(
            actor or Actor.cli(), "key.create", f"key:{record.key_id}",
            after={"team": team, "roles": list(record.roles), "name": name, "prefix": record.prefix},
        )
        return CreatedKey(record=record, secret=secret)

    async def list(self, team: str | None = None, include_revoked: bool = False) -> list[KeyRecord]:
        query = select(api_keys).order_by(api_keys.c.created_at)
        if team:
            query = query.where(api_keys.c.team == team)
        if not include_revoked:
            query = query.where(api_keys.c.revoked.is_(False))
        async with self._db.engine.connect() as conn:
            rows = (await conn.execute(query)).mappings().all()
        return [
            KeyRecord(
                key_id=row["key_id"],
                prefix=row["prefix"],
                team=row["team"],
                roles=_parse_roles(row["roles"]),
                name=row["name"],
                created_at=row["created_at"],
                revoked_at=row["revoked_at"],
            )
            for row in rows
        ]

    async def revoke(self, key_id: str, *, actor: Actor | None = None, reason: str | None = None) -> bool:
        async with self._db.engine.begin() as conn:
            result = await conn.execute(
                update(api_keys)
                .where(api_keys.c.key_id == key_id, api_keys.c.revoked.is_(False))
                .values(revoked=True, revoked_at=datetime.now(UTC))
            )
        self.invalidate()
        if result.rowcount:
            await self._audit.append(actor or Actor.cli(), "key.revoke", f"key:{key_id}", reason=reason)
        return bool(result.rowcount)

    def invalidate(self) -> None:
        self._generation += 1
        self._cache.clear()

    async def authenticate(self, secret: str) -> Principal | None:
        digest = hash_key(secret)
        if self._admin_hash is not None and hmac.compare_digest(digest, self._admin_hash):
            return Principal(key_id="admin", team="admin", roles=frozenset(ROLES))
        cached = self._cache.get(digest)
        if cached is not None:
            principal, refresh_after, expires = cached
            now = time.monotonic()
            if now < expires:
                if now >= refresh_after and digest not in self._lookups:
                    self._refresh_in_background(digest)
                return principal
        return await self._lookup_once(digest)

    async def _lookup_once(self, digest: str) -> Principal | None:
        """One storage lookup per digest at a time, shared by everyone asking meanwhile.

        The lookup runs as its own task, so a caller that goes away (and is cancelled) does not
        cancel it for the others.
        """
        lookup = self._lookups.get(digest)
        if lookup is None:
            lookup = asyncio.get_running_loop().create_task(self._query_and_remember(digest))
            self._lookups[digest] = lookup
            lookup.add_done_callback(lambda _: self._lookups.pop(digest, None))
        return await asyncio.shield(lookup)

    async def _query_and_remember(self, digest: str) -> Principal | None:
        generation = self._generation
        principal = await self._query(digest)
        if generation == self._generation:  # else a revoke landed meanwhile: the answer may be stale
            self._remember(digest, principal)
        return principal

    def _refresh_in_background(self, digest: str) -> None:
        async def refresh() -> None:
            try:
                await self._lookup_once(digest)
            except Exception as exc:
                # The cached answer stays until it expires; the next request past expiry retries.
                log.warning("could not refresh an API key from storage", extra={"error": type(exc).__name__})

        task = asyncio.get_running_loop().create_task(refresh())
        self._refreshing.add(task)
        task.add_done_callback(self._refreshing.discard)

    async def _query(self, digest: str) -> Principal | None:
        async with self._db.engine.connect() as conn:
            row = (
                (await conn.execute(select(api_keys).where(api_keys.c.key_hash == digest)))
                .mappings()
                .first()
            )
        if row is None or row["revoked"]:
            return None
        return Principal(row["key_id"], row["team"], frozenset(_parse_roles(row["roles"])))

    def _remember(self, digest: str, principal: Principal | None) -> None:
        if len(self._cache) > 100_000:
            # Bounded: a flood of random bad keys must not grow memory without limit.
            self._cache.clear()
        ttl = self._ttl if principal is not None else min(self._ttl, _BAD_KEY_TTL_S)
        now = time.monotonic()
        self._cache[digest] = (principal, now + ttl * (1 - _REFRESH_AHEAD), now + ttl)
