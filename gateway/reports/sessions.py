"""Browser sign-in for the finance page, without ever putting an API key in a URL.

A browser cannot send ``Authorization: Bearer``, so ``/reports`` also accepts a session
cookie. There are two ways to get one:

* the login form (``POST /reports/login`` with the key in the form body), or
* a one-time login link, minted by a finance key through the admin API
  (``POST /admin/reports/login-links``) for tools and headless browsers. The link's token
  is not a key: it works once (redeeming deletes it), for ``LINK_TTL`` only, and its page
  redirects at once with ``Referrer-Policy: no-referrer`` so the token leaks nowhere.

Tokens are 256-bit random strings; only their sha256 is stored, beside the sha256 of the API
key they act for. Every use looks that key up again, so revoking the key (or rotating the
bootstrap admin key) ends its sessions at once. Sessions live in the database, so every
worker and replica honours them.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from datetime import UTC, datetime, timedelta
from typing import Final

from sqlalchemy import delete, select

from gateway.auth import ROLES, Principal
from gateway.auth.keys import hash_key
from gateway.storage import Database
from gateway.storage.schema import api_keys, report_sessions

SESSION_TTL: Final = timedelta(hours=8)
LINK_TTL: Final = timedelta(minutes=2)
COOKIE: Final = "gw_reports_session"


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _aware(value: datetime) -> datetime:
    # SQLite hands timestamps back without a zone; everything stored here is UTC.
    return value if value.tzinfo else value.replace(tzinfo=UTC)


class ReportSessions:
    """Sessions and login links, stored as hashes in ``report_sessions``."""

    def __init__(self, db: Database, *, admin_key: str = "") -> None:
        self._db = db
        self._admin_hash = hash_key(admin_key) if admin_key else None

    async def create_session(self, api_key: str) -> tuple[str, datetime]:
        """A new session for ``api_key`` (already authenticated by the caller)."""
        return await self._create("session", hash_key(api_key), SESSION_TTL)

    async def create_link(self, api_key: str) -> tuple[str, datetime]:
        """A one-time login token acting for ``api_key``."""
        return await self._create("link", hash_key(api_key), LINK_TTL)

    async def _create(self, kind: str, key_hash: str, ttl: timedelta) -> tuple[str, datetime]:
        token = secrets.token_urlsafe(32)
        now = datetime.now(UTC)
        expires = now + ttl
        async with self._db.engine.begin() as conn:
            # Expired rows are swept here, on the rare write path, rather than by a timer.
            await conn.execute(delete(report_sessions).where(report_sessions.c.expires_at < now))
            await conn.execute(
                report_sessions.insert().values(
                    token_hash=_digest(token), kind=kind, key_hash=key_hash, created_at=now, expires_at=expires
                )
            )
        return token, expires

    async def redeem_link(self, token: str) -> tuple[str, datetime] | None:
        """Trade a login link for a session; ``None`` if unknown, used or expired.

        The DELETE is the single-use guarantee: of two requests racing with the same token,
        only one sees its row deleted.
        """
        digest = _digest(token)
        now = datetime.now(UTC)
        async with self._db.engine.begin() as conn:
            row = (
                await conn.execute(
                    select(report_sessions.c.key_hash, report_sessions.c.expires_at).where(
                        report_sessions.c.token_hash == digest, report_sessions.c.kind == "link"
                    )
                )
            ).first()
            if row is None:
                return None
            deleted = await conn.execute(delete(report_sessions).where(report_sessions.c.token_hash == digest))
            if deleted.rowcount != 1 or _aware(row.expires_at) <= now:
                return None
        if await self._principal_for(row.key_hash) is None:
            return None
        return await self._create("session", row.key_hash, SESSION_TTL)

    async def principal(self, token: str) -> Principal | None:
        """The principal a session cookie acts for, if the session and its key are still valid."""
        async with self._db.engine.connect() as conn:
            row = (
                await conn.execute(
                    select(report_sessions.c.key_hash, report_sessions.c.expires_at).where(
                        report_sessions.c.token_hash == _digest(token), report_sessions.c.kind == "session"
                    )
                )
            ).first()
        if row is None or _aware(row.expires_at) <= datetime.now(UTC):
            return None
        return await self._principal_for(row.key_hash)

    async def end(self, token: str) -> None:
        async with self._db.engine.begin() as conn:
            await conn.execute(delete(report_sessions).where(report_sessions.c.token_hash == _digest(token)))

    async def _principal_for(self, key_hash: str) -> Principal | None:
        if self._admin_hash is not None and hmac.compare_digest(key_hash, self._admin_hash):
            return Principal(key_id="admin", team="admin", roles=frozenset(ROLES))
        async with self._db.engine.connect() as conn:
            row = (
                await conn.execute(
                    select(api_keys.c.key_id, api_keys.c.team, api_keys.c.roles, api_keys.c.revoked).where(
                        api_keys.c.key_hash == key_hash
                    )
                )
            ).first()
        if row is None or row.revoked:
            return None
        return Principal(row.key_id, row.team, frozenset(role for role in row.roles.split(",") if role))
