"""An append-only audit log whose entries are chained by sha256.

Each entry's hash covers its content and the previous entry's hash, so editing an entry
breaks its own hash and deleting one breaks the next entry's link; ``verify`` reports the
first broken link. Appends from several replicas are serialised by a UNIQUE constraint on
``prev_hash``: two writers extending the same entry cannot both succeed, and the loser
retries on the new tail. The chain proves the log was not edited *inside* the database; it
does not stop someone who can rewrite the whole table and every hash after it (export the
head hash elsewhere for that).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from sqlalchemy import desc, insert, select
from sqlalchemy.exc import IntegrityError

from gateway.storage import Database
from gateway.storage.schema import audit_log

GENESIS = "0" * 64


@dataclass(frozen=True, slots=True)
class Actor:
    key_id: str
    team: str

    @classmethod
    def cli(cls, name: str | None = None) -> Actor:
        return cls(key_id=f"cli:{name or 'local'}", team="cli")


@dataclass(frozen=True, slots=True)
class AuditEntry:
    seq: int
    ts: datetime
    actor_key_id: str
    actor_team: str
    action: str
    target: str
    before: Any
    after: Any
    reason: str | None
    ticket: str | None
    prev_hash: str
    hash: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "ts": self.ts.isoformat(),
            "actor_key_id": self.actor_key_id,
            "actor_team": self.actor_team,
            "action": self.action,
            "target": self.target,
            "before": self.before,
            "after": self.after,
            "reason": self.reason,
            "ticket": self.ticket,
            "prev_hash": self.prev_hash,
            "hash": self.hash,
        }


@dataclass(frozen=True, slots=True)
class ChainBreak:
    seq: int
    problem: str


def _canonical(value: Any) -> str | None:
    return None if value is None else orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()


def _ts(value: datetime) -> datetime:
    # SQLite returns naive datetimes; everything the log stores is UTC.
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def entry_hash(
    seq: int, ts: datetime, actor_key_id: str, actor_team: str, action: str, target: str,
    before: str | None, after: str | None, reason: str | None, ticket: str | None, prev_hash: str,
) -> str:
    material = orjson.dumps(
        [seq, _ts(ts).isoformat(timespec="microseconds"), actor_key_id, actor_team, action, target,
         before, after, reason, ticket, prev_hash]
    )
    return hashlib.sha256(material).hexdigest()


class AuditLog:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def append(
        self,
        actor: Actor,
        action: str,
        target: str,
        *,
        before: Any = None,
        after: Any = None,
        reason: str | None = None,
        ticket: str | None = None,
    ) -> AuditEntry:
        before_json, after_json = _canonical(before), _canonical(after)
        for _ in range(50):
            async with self._db.engine.connect() as conn:
                last = select(audit_log.c.seq, audit_log.c.hash).order_by(desc(audit_log.c.seq)).limit(1)
                tail = (await conn.execute(last)).first()
            seq, prev = (tail[0] + 1, tail[1]) if tail else (1, GENESIS)
            ts = datetime.now(UTC)
            digest = entry_hash(seq, ts, actor.key_id, actor.team, action, target, before_json, after_json,
                                reason, ticket, prev)
            try:
                async with self._db.engine.begin() as conn:
                    await conn.execute(
                        insert(audit_log).values(
                            seq=seq, ts=ts, actor_key_id=actor.key_id, actor_team=actor.team, action=action,
                            target=target, before=before_json, after=after_json, reason=reason, ticket=ticket,
                            prev_hash=prev, hash=digest,
                        )
                    )
            except IntegrityError:
                continue  # another writer extended the chain first: retry on the new tail
            return AuditEntry(seq, ts, actor.key_id, actor.team, action, target, before, after, reason, ticket,
                              prev, digest)
        raise RuntimeError("could not append to the audit log after 50 attempts (heavy contention)")

    async def list(
        self,
        *,
        since: datetime | None = None,
        target: str | None = None,
        actor: str | None = None,
        action: str | None = None,
        limit: int | None = None,
    ) -> list[AuditEntry]:
        query = select(audit_log).order_by(audit_log.c.seq)
        if since is not None:
            query = query.where(audit_log.c.ts >= since)
        if target:
            query = query.where(audit_log.c.target.like(f"{target}%"))
        if actor:
            query = query.where((audit_log.c.actor_key_id == actor) | (audit_log.c.actor_team == actor))
        if action:
            query = query.where(audit_log.c.action == action)
        if limit:
            query = query.limit(limit)
        async with self._db.engine.connect() as conn:
            rows = (await conn.execute(query)).mappings().all()
        return [_entry(row) for row in rows]

    async def verify(self) -> ChainBreak | None:
        """The first broken link, or ``None`` when the whole chain holds."""
        async with self._db.engine.connect() as conn:
            rows: Sequence[Any] = (await conn.execute(select(audit_log).order_by(audit_log.c.seq))).mappings().all()
        expected_prev, expected_seq = GENESIS, 1
        for row in rows:
            if row["seq"] != expected_seq:
                return ChainBreak(expected_seq, f"entry {expected_seq} is missing (next is {row['seq']})")
            if row["prev_hash"] != expected_prev:
                return ChainBreak(row["seq"], "its link to the previous entry is broken")
            digest = entry_hash(row["seq"], row["ts"], row["actor_key_id"], row["actor_team"], row["action"],
                                row["target"], row["before"], row["after"], row["reason"], row["ticket"],
                                row["prev_hash"])
            if digest != row["hash"]:
                return ChainBreak(row["seq"], "its content does not match its hash (edited)")
            expected_prev, expected_seq = row["hash"], row["seq"] + 1
        return None


def _entry(row: Any) -> AuditEntry:
    return AuditEntry(
        seq=row["seq"], ts=_ts(row["ts"]), actor_key_id=row["actor_key_id"], actor_team=row["actor_team"],
        action=row["action"], target=row["target"],
        before=orjson.loads(row["before"]) if row["before"] is not None else None,
        after=orjson.loads(row["after"]) if row["after"] is not None else None,
        reason=row["reason"], ticket=row["ticket"], prev_hash=row["prev_hash"], hash=row["hash"],
    )
