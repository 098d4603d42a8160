"""``POST /v1/feedback``: a caller's verdict on an answer, stored, sent to Langfuse, analysed.

The body names the request (``request_id``, or the ``trace_id`` from ``x-gateway-trace-id``),
a ``metric`` (``thumbs_down``, ``resolved``, ``csat``...), a numeric ``value`` and an optional
``comment``. Any key of the team that made the request may post; a key of another team is
told the request does not exist (404), the same answer as for an unknown id, so ids of other
teams' requests cannot be probed.

The request is found in the ledger (every replica writes it). A request answered a moment ago
may not be there yet (the ledger writes in batches): the service first flushes this replica's
ledger writer and looks again, so feedback posted to the replica that served the request right
after the answer works; on another replica it may take the ledger's flush interval.

The stored row copies the request's variant, rollout and prompt version, so a rollout's
analysis gates on ``feedback.METRIC`` (gateway.scoring.quality). When tracing is on, the value
also goes to Langfuse as a score named ``metric`` on the request's trace.
"""

from __future__ import annotations

import math
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from sqlalchemy import insert, or_, select

from gateway.errors import InvalidRequest, NotFound
from gateway.scoring.langfuse import LangfuseScore
from gateway.storage.schema import feedback, ledger

if TYPE_CHECKING:
    from gateway.auth import Principal
    from gateway.scoring.langfuse import ScoreSender
    from gateway.storage import Database

METRIC_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_\-]{0,63}$"


class FeedbackBody(BaseModel):
    """The body of ``POST /v1/feedback``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    request_id: str | None = Field(None, min_length=1, max_length=64, description="The request's x-request-id.")
    trace_id: str | None = Field(None, pattern=r"^[0-9a-f]{32}$", description="Or its x-gateway-trace-id.")
    metric: str = Field(..., pattern=METRIC_PATTERN, description="What is measured, e.g. thumbs_down.")
    value: float = Field(..., description="The value, e.g. 1 for a thumbs-down and 0 for a thumbs-up.")
    comment: str | None = Field(None, max_length=4000, description="Free text, kept and sent to Langfuse.")

    @field_validator("value")
    @classmethod
    def _finite(cls, value: float) -> float:
        if not math.isfinite(value):
            raise ValueError("must be a finite number")
        return value


@dataclass(frozen=True, slots=True)
class StoredFeedback:
    id: str
    request_id: str
    trace_id: str | None
    metric: str
    value: float
    comment: str | None
    created: datetime
    variant: str | None
    rollout_id: str | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "feedback",
            "request_id": self.request_id,
            "trace_id": self.trace_id,
            "metric": self.metric,
            "value": self.value,
            "comment": self.comment,
            "created": int(self.created.timestamp()),
            "variant": self.variant,
            "rollout_id": self.rollout_id,
        }


def parse_body(raw: bytes) -> FeedbackBody:
    """The body, or an OpenAI-shaped 400 naming the field."""
    try:
        body = FeedbackBody.model_validate_json(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or None
        message = first["msg"] if where is None else f"'{where}': {first['msg']}"
        raise InvalidRequest(f"Invalid feedback: {message}.", param=where, code="invalid_feedback") from None
    if (body.request_id is None) == (body.trace_id is None):
        raise InvalidRequest(
            "Give exactly one of 'request_id' or 'trace_id'.", param="request_id", code="invalid_feedback"
        )
    return body


class FeedbackService:
    def __init__(
        self,
        db: Database,
        *,
        sender: ScoreSender | None = None,
        flush_ledger: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self._db = db
        self._sender = sender
        self._flush_ledger = flush_ledger

    async def post(self, principal: Principal, body: FeedbackBody) -> StoredFeedback:
        found = await self._request(principal.team, body)
        if found is None and self._flush_ledger is not None:
            await self._flush_ledger()
            found = await self._request(principal.team, body)
        if found is None:
            given = f"request '{body.request_id}'" if body.request_id else f"trace '{body.trace_id}'"
            raise NotFound(
                f"No {given} made by your team.",
                param="request_id" if body.request_id else "trace_id",
                code="request_not_found",
            )
        stored = StoredFeedback(
            id="fb_" + os.urandom(12).hex(),
            request_id=found["request_id"],
            trace_id=found["trace_id"],
            metric=body.metric,
            value=body.value,
            comment=body.comment,
            created=datetime.now(UTC),
            variant=found["variant"],
            rollout_id=found["rollout_id"],
        )
        async with self._db.engine.begin() as conn:
            await conn.execute(
                insert(feedback).values(
                    id=stored.id,
                    ts=stored.created,
                    request_id=stored.request_id,
                    trace_id=stored.trace_id,
                    team=principal.team,
                    key_id=principal.key_id,
                    metric=stored.metric,
                    value=stored.value,
                    comment=stored.comment,
                    alias=found["alias"],
                    prompt_name=found["prompt_name"],
                    prompt_version=found["prompt_version"],
                    variant=stored.variant,
                    rollout_id=stored.rollout_id,
                )
            )
        if self._sender is not None and stored.trace_id is not None:
            metadata: dict[str, Any] = {"request_id": stored.request_id, "source": "feedback", "feedback_id": stored.id}
            for key in ("variant", "rollout_id", "prompt_name", "prompt_version"):
                if found[key] is not None:
                    metadata[key] = found[key]
            self._sender.submit(
                LangfuseScore(
                    id=stored.id,
                    trace_id=stored.trace_id,
                    name=stored.metric,
                    value=stored.value,
                    comment=stored.comment,
                    metadata=metadata,
                )
            )
        return stored

    async def _request(self, team: str, body: FeedbackBody) -> dict[str, Any] | None:
        """The request's ledger row, if ``team`` made it (a shadow copy is nobody's answer)."""
        c = ledger.c
        where = c.request_id == body.request_id if body.request_id else c.trace_id == body.trace_id
        query = (
            select(c.request_id, c.trace_id, c.alias, c.prompt_name, c.prompt_version, c.variant, c.rollout_id)
            .where(where, c.team == team, or_(c.kind.is_(None), c.kind != "shadow"))
            .order_by(c.id.desc())
            .limit(1)
        )
        async with self._db.engine.connect() as conn:
            row = (await conn.execute(query)).mappings().first()
        return dict(row) if row is not None else None
