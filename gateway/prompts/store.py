"""Prompt versions, labels, label history and evaluation runs in SQL (SQLite or PostgreSQL).

Every write that moves a label (including the ``latest`` move of a push) runs in a
``LabelTransaction``, which first bumps the single ``prompt_state.revision`` row. That does
two jobs: it serialises label moves across replicas (the row lock in PostgreSQL, the write
lock in SQLite), so "read the label, check the gate, move it" cannot interleave; and it gives
replicas one cheap number to poll for "did any label move?". Version numbers are allocated as
``max + 1`` under that lock, and the unique indexes on ``(name, version)`` and
``(name, sha256)`` stay as a backstop.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from sqlalchemy import and_, desc, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.storage import Database
from gateway.storage.schema import prompt_evals, prompt_label_history, prompt_labels, prompt_state, prompt_versions

NANOS_PER_USD = 1_000_000_000


def _utc(value: datetime) -> datetime:
    # SQLite hands back naive datetimes; everything stored here is UTC.
    return value if value.tzinfo else value.replace(tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class VersionRecord:
    name: str
    version: int
    sha256: str
    content: str
    signature: str
    key_id: str
    author: str
    message: str
    ticket: str | None
    created_at: datetime

    @classmethod
    def of(cls, row: Any) -> VersionRecord:
        return cls(
            name=row["name"], version=row["version"], sha256=row["sha256"], content=row["content"],
            signature=row["signature"], key_id=row["key_id"], author=row["author"], message=row["message"],
            ticket=row["ticket"], created_at=_utc(row["created_at"]),
        )


@dataclass(frozen=True, slots=True)
class LabelMove:
    id: int
    name: str
    label: str
    from_version: int | None
    to_version: int
    action: str
    forced: bool
    actor: str
    reason: str | None
    ticket: str | None
    reverts: int | None
    at: datetime

    @classmethod
    def of(cls, row: Any) -> LabelMove:
        return cls(
            id=row["id"], name=row["name"], label=row["label"], from_version=row["from_version"],
            to_version=row["to_version"], action=row["action"], forced=bool(row["forced"]), actor=row["actor"],
            reason=row["reason"], ticket=row["ticket"], reverts=row["reverts"], at=_utc(row["at"]),
        )


@dataclass(frozen=True, slots=True)
class EvalRecord:
    id: int
    name: str
    version: int
    model: str
    started_at: datetime
    finished_at: datetime
    passed: bool
    score: float
    pass_rate: float
    cases: int
    passed_cases: int
    cost_usd: float
    actor: str
    results: list[dict[str, Any]]

    @classmethod
    def of(cls, row: Any) -> EvalRecord:
        return cls(
            id=row["id"], name=row["name"], version=row["version"], model=row["model"],
            started_at=_utc(row["started_at"]), finished_at=_utc(row["finished_at"]), passed=bool(row["passed"]),
            score=row["score"], pass_rate=row["pass_rate"], cases=row["cases"], passed_cases=row["passed_cases"],
            cost_usd=row["cost_nanos"] / NANOS_PER_USD, actor=row["actor"], results=orjson.loads(row["results"]),
        )


@dataclass(frozen=True, slots=True)
class PromptSummary:
    name: str
    latest: int
    labels: dict[str, int]
    updated_at: datetime
    author: str


class LabelTransaction:
    """Reads and writes inside one serialised transaction (see the module docstring)."""

    def __init__(self, conn: AsyncConnection, revision: int) -> None:
        self.conn = conn
        self.revision = revision
        self.now = datetime.now(UTC)

    async def label(self, name: str, label: str) -> int | None:
        query = select(prompt_labels.c.version).where(prompt_labels.c.name == name, prompt_labels.c.label == label)
        return (await self.conn.execute(query)).scalar()

    async def latest_version(self, name: str) -> int:
        query = select(func.max(prompt_versions.c.version)).where(prompt_versions.c.name == name)
        return int((await self.conn.execute(query)).scalar() or 0)

    async def has_version(self, name: str, version: int) -> bool:
        query = select(prompt_versions.c.id).where(prompt_versions.c.name == name, prompt_versions.c.version == version)
        return (await self.conn.execute(query)).first() is not None

    async def version_by_sha(self, name: str, sha256: str) -> VersionRecord | None:
        query = select(prompt_versions).where(prompt_versions.c.name == name, prompt_versions.c.sha256 == sha256)
        row = (await self.conn.execute(query)).mappings().first()
        return VersionRecord.of(row) if row is not None else None

    async def latest_eval(self, name: str, version: int) -> EvalRecord | None:
        return await _latest_eval(self.conn, name, version)

    async def rollback_target(self, name: str, label: str) -> LabelMove | None:
        """The most recent move of ``label`` that is neither a rollback nor already rolled back."""
        history = prompt_label_history.c
        reverted = select(history.reverts).where(
            history.name == name, history.label == label, history.reverts.is_not(None)
        )
        query = (
            select(prompt_label_history)
            .where(history.name == name, history.label == label, history.action != "rollback",
                   history.id.not_in(reverted))
            .order_by(desc(history.id))
            .limit(1)
        )
        row = (await self.conn.execute(query)).mappings().first()
        return LabelMove.of(row) if row is not None else None

    async def add_version(self, record: VersionRecord) -> None:
        await self.conn.execute(
            insert(prompt_versions).values(
                name=record.name, version=record.version, sha256=record.sha256, content=record.content,
                signature=record.signature, key_id=record.key_id, author=record.author, message=record.message,
                ticket=record.ticket, created_at=record.created_at,
            )
        )

    async def move(
        self,
        name: str,
        label: str,
        *,
        from_version: int | None,
        to_version: int,
        action: str,
        actor: str,
        forced: bool = False,
        reason: str | None = None,
        ticket: str | None = None,
        reverts: int | None = None,
    ) -> LabelMove:
        if from_version is None:
            await self.conn.execute(
                insert(prompt_labels).values(name=name, label=label, version=to_version, updated_at=self.now,
                                             updated_by=actor)
            )
        else:
            await self.conn.execute(
                update(prompt_labels)
                .where(prompt_labels.c.name == name, prompt_labels.c.label == label)
                .values(version=to_version, updated_at=self.now, updated_by=actor)
            )
        result = await self.conn.execute(
            insert(prompt_label_history).values(
                name=name, label=label, from_version=from_version, to_version=to_version, action=action,
                forced=forced, actor=actor, reason=reason, ticket=ticket, reverts=reverts, at=self.now,
            )
        )
        move_id = int(result.inserted_primary_key[0])  # type: ignore[index]
        return LabelMove(move_id, name, label, from_version, to_version, action, forced, actor, reason, ticket,
                         reverts, self.now)


async def _latest_eval(conn: AsyncConnection, name: str, version: int) -> EvalRecord | None:
    query = (
        select(prompt_evals)
        .where(prompt_evals.c.name == name, prompt_evals.c.version == version)
        .order_by(desc(prompt_evals.c.id))
        .limit(1)
    )
    row = (await conn.execute(query)).mappings().first()
    return EvalRecord.of(row) if row is not None else None


class PromptStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    @asynccontextmanager
    async def label_transaction(self) -> AsyncIterator[LabelTransaction]:
        """A transaction that holds the repository's write lock; commits on success."""
        async with self._db.engine.begin() as conn:
            # The first statement is the write: in SQLite that takes the write lock up front
            # (no read-then-upgrade deadlock), in PostgreSQL it locks the row until commit.
            await conn.execute(update(prompt_state).where(prompt_state.c.id == 1)
                               .values(revision=prompt_state.c.revision + 1))
            revision = (await conn.execute(select(prompt_state.c.revision).where(prompt_state.c.id == 1))).scalar()
            yield LabelTransaction(conn, int(revision or 0))

    # -- reads used by the request path's cache ------------------------------------------

    async def revision(self) -> int:
        async with self._db.engine.connect() as conn:
            value = (await conn.execute(select(prompt_state.c.revision).where(prompt_state.c.id == 1))).scalar()
        return int(value or 0)

    async def snapshot(self) -> tuple[int, dict[str, dict[str, int]]]:
        """The revision and every label; the revision is read first so a move committed in
        between is seen again (as a newer revision) at the next poll, never lost."""
        async with self._db.engine.connect() as conn:
            revision = (await conn.execute(select(prompt_state.c.revision).where(prompt_state.c.id == 1))).scalar()
            rows = (await conn.execute(select(prompt_labels.c.name, prompt_labels.c.label,
                                              prompt_labels.c.version))).all()
        labels: dict[str, dict[str, int]] = {}
        for name, label, version in rows:
            labels.setdefault(name, {})[label] = version
        return int(revision or 0), labels

    async def version(self, name: str, version: int) -> VersionRecord | None:
        query = select(prompt_versions).where(prompt_versions.c.name == name, prompt_versions.c.version == version)
        async with self._db.engine.connect() as conn:
            row = (await conn.execute(query)).mappings().first()
        return VersionRecord.of(row) if row is not None else None

    # -- reads for people ------------------------------------------------------------------

    async def versions(self, name: str) -> list[VersionRecord]:
        query = select(prompt_versions).where(prompt_versions.c.name == name).order_by(prompt_versions.c.version)
        async with self._db.engine.connect() as conn:
            rows = (await conn.execute(query)).mappings().all()
        return [VersionRecord.of(row) for row in rows]

    async def labels(self, name: str) -> dict[str, int]:
        query = select(prompt_labels.c.label, prompt_labels.c.version).where(prompt_labels.c.name == name)
        async with self._db.engine.connect() as conn:
            return {label: version for label, version in (await conn.execute(query)).all()}

    async def moves(self, name: str) -> list[LabelMove]:
        query = (
            select(prompt_label_history)
            .where(prompt_label_history.c.name == name)
            .order_by(prompt_label_history.c.id)
        )
        async with self._db.engine.connect() as conn:
            rows = (await conn.execute(query)).mappings().all()
        return [LabelMove.of(row) for row in rows]

    async def summaries(self) -> list[PromptSummary]:
        latest = (
            select(prompt_versions.c.name, func.max(prompt_versions.c.version).label("latest"))
            .group_by(prompt_versions.c.name)
            .subquery()
        )
        newest = select(prompt_versions.c.name, prompt_versions.c.version, prompt_versions.c.created_at,
                        prompt_versions.c.author).join(
            latest, and_(latest.c.name == prompt_versions.c.name, latest.c.latest == prompt_versions.c.version)
        ).order_by(prompt_versions.c.name)
        async with self._db.engine.connect() as conn:
            rows = (await conn.execute(newest)).all()
            label_rows = (await conn.execute(select(prompt_labels.c.name, prompt_labels.c.label,
                                                    prompt_labels.c.version))).all()
        labels: dict[str, dict[str, int]] = {}
        for name, label, version in label_rows:
            labels.setdefault(name, {})[label] = version
        return [
            PromptSummary(name, version, dict(sorted(labels.get(name, {}).items())), _utc(created_at), author)
            for name, version, created_at, author in rows
        ]

    async def latest_eval(self, name: str, version: int) -> EvalRecord | None:
        async with self._db.engine.connect() as conn:
            return await _latest_eval(conn, name, version)

    async def evals(self, name: str, version: int | None = None) -> list[EvalRecord]:
        query = select(prompt_evals).where(prompt_evals.c.name == name).order_by(prompt_evals.c.id)
        if version is not None:
            query = query.where(prompt_evals.c.version == version)
        async with self._db.engine.connect() as conn:
            rows = (await conn.execute(query)).mappings().all()
        return [EvalRecord.of(row) for row in rows]

    async def add_eval(
        self,
        *,
        name: str,
        version: int,
        model: str,
        started_at: datetime,
        finished_at: datetime,
        passed: bool,
        score: float,
        pass_rate: float,
        passed_cases: int,
        cost_usd: float,
        actor: str,
        results: list[dict[str, Any]],
    ) -> EvalRecord:
        values = {
            "name": name, "version": version, "model": model, "started_at": started_at,
            "finished_at": finished_at, "passed": passed, "score": score, "pass_rate": pass_rate,
            "cases": len(results), "passed_cases": passed_cases, "cost_nanos": round(cost_usd * NANOS_PER_USD),
            "actor": actor, "results": orjson.dumps(results).decode(),
        }
        async with self._db.engine.begin() as conn:
            result = await conn.execute(insert(prompt_evals).values(**values))
        eval_id = int(result.inserted_primary_key[0])  # type: ignore[index]
        return EvalRecord.of({**values, "id": eval_id})
