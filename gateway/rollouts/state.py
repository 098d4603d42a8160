"""A rollout's live state, stored in ``rollout_state`` so every replica routes alike.

Statuses and what the canary gets (``RolloutState.weight_of``):

    pending   nothing (a ``start: manual`` rollout waiting for ``gateway rollouts start``)
    running   the current step's weight; the analysis may advance, promote or abort it
    paused    the current step's weight, held; the analysis neither advances nor aborts it
    promoted  all of the matching traffic (final)
    aborted   nothing: rolled back to stable (final)

Every change is a compare-and-set on ``revision``: two controllers (or an operator and the
analysis) cannot both move the same rollout from the same state. A write by the analysis also
carries its controller lease generation (``fence``, see ``gateway.rollouts.lease``) and is
refused once a newer generation has written: a controller that lost its lease mid-decision
never moves a rollout after its successor did.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

import orjson
from sqlalchemy import func, insert, or_, select, update
from sqlalchemy.exc import IntegrityError

from gateway.storage.schema import rollout_state

if TYPE_CHECKING:
    from gateway.rollouts.model import Rollout
    from gateway.storage import Database

Status = Literal["pending", "running", "paused", "promoted", "aborted"]
STATUSES: tuple[Status, ...] = ("pending", "running", "paused", "promoted", "aborted")
FINAL: frozenset[str] = frozenset({"promoted", "aborted"})


@dataclass(frozen=True, slots=True)
class RolloutState:
    rollout_id: str
    status: Status
    step: int = 0
    failures: int = 0
    started_at: datetime | None = None
    step_started_at: datetime | None = None
    updated_at: datetime | None = None
    actor: str = ""
    revision: int = 0  # 0: never stored
    history: tuple[dict[str, Any], ...] = field(default=(), compare=False)
    fence: int = 0  # the controller lease generation that last wrote it (0: operators only)

    def weight_of(self, rollout: Rollout) -> float | None:
        if self.status in ("running", "paused"):
            return rollout.weights[min(self.step, len(rollout.weights) - 1)]
        if self.status == "promoted":
            return 1.0
        return None

    def as_dict(self) -> dict[str, Any]:
        return {
            "rollout_id": self.rollout_id, "status": self.status, "step": self.step, "failures": self.failures,
            "started_at": _iso(self.started_at), "step_started_at": _iso(self.step_started_at),
            "updated_at": _iso(self.updated_at), "actor": self.actor, "revision": self.revision,
            "history": list(self.history),
        }


def initial_state(rollout: Rollout) -> RolloutState:
    """What a rollout with no stored row is taken to be (see ``RolloutBook.weight``)."""
    return RolloutState(rollout.id, "running" if rollout.spec.start == "auto" else "pending")


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _aware(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


class StateConflict(Exception):
    """Someone else changed the rollout since it was read; read it again and decide again."""


class RolloutStateStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def revision(self) -> int:
        """A number that changes whenever any rollout's state does (sum of revisions and count)."""
        async with self._db.engine.connect() as conn:
            row = (await conn.execute(select(func.coalesce(func.sum(rollout_state.c.revision), 0),
                                             func.count()).select_from(rollout_state))).one()
        return int(row[0]) * 1_000_003 + int(row[1])

    async def max_fence(self) -> int:
        """The largest controller generation that has written any rollout (the lease's floor)."""
        async with self._db.engine.connect() as conn:
            return int((await conn.execute(select(func.max(rollout_state.c.fence)))).scalar() or 0)

    async def all(self) -> dict[str, RolloutState]:
        async with self._db.engine.connect() as conn:
            rows = (await conn.execute(select(rollout_state))).mappings().all()
        return {row["rollout_id"]: _state_of(row) for row in rows}

    async def get(self, rollout_id: str) -> RolloutState | None:
        async with self._db.engine.connect() as conn:
            row = (await conn.execute(select(rollout_state).where(rollout_state.c.rollout_id == rollout_id))
                   ).mappings().first()
        return _state_of(row) if row is not None else None

    async def put(self, before: RolloutState, after: RolloutState, *, fence: int = 0) -> RolloutState:
        """Store ``after`` if the stored row is still ``before`` (by revision) and, for the
        analysis (``fence`` > 0, its lease generation), no newer controller has written it;
        raises ``StateConflict``."""
        if fence and before.fence > fence:
            raise StateConflict(after.rollout_id)
        now = datetime.now(UTC)
        stored_fence = max(before.fence, fence)
        values = {
            "status": after.status, "step": after.step, "failures": after.failures, "started_at": after.started_at,
            "step_started_at": after.step_started_at, "updated_at": now, "actor": after.actor[:64],
            "revision": before.revision + 1, "history": orjson.dumps(list(after.history[-50:])).decode(),
            "fence": stored_fence,
        }
        try:
            async with self._db.engine.begin() as conn:
                if before.revision == 0:
                    await conn.execute(insert(rollout_state).values(rollout_id=after.rollout_id, **values))
                else:
                    result = await conn.execute(
                        update(rollout_state)
                        .where(rollout_state.c.rollout_id == after.rollout_id)
                        .where(rollout_state.c.revision == before.revision)
                        .where(or_(rollout_state.c.fence.is_(None), rollout_state.c.fence <= stored_fence))
                        .values(**values)
                    )
                    if result.rowcount != 1:
                        raise StateConflict(after.rollout_id)
        except IntegrityError:  # a first row inserted by someone else meanwhile
            raise StateConflict(after.rollout_id) from None
        return RolloutState(
            after.rollout_id, after.status, after.step, after.failures, after.started_at, after.step_started_at,
            now, after.actor[:64], before.revision + 1, tuple(after.history[-50:]), stored_fence,
        )


def _state_of(row: Any) -> RolloutState:
    status = row["status"]
    if status not in STATUSES:
        status = "paused"  # a status this version does not know: hold, never route more
    return RolloutState(
        rollout_id=row["rollout_id"], status=status, step=row["step"], failures=row["failures"],
        started_at=_aware(row["started_at"]), step_started_at=_aware(row["step_started_at"]),
        updated_at=_aware(row["updated_at"]), actor=row["actor"], revision=row["revision"],
        history=tuple(orjson.loads(row["history"] or "[]")), fence=row["fence"] or 0,
    )
