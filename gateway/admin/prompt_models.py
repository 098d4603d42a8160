"""The prompt repository's request and response models: the admin API's wire shapes.

Shared by the admin routes (``gateway.admin.prompts``) and the remote CLI, which parses the
API's answers into the same models the local CLI builds from the service's records, so both
modes print the same thing. No FastAPI or runtime import here: the CLI loads this module.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, Field

from gateway.admin.types import UtcDateTime

if TYPE_CHECKING:
    from gateway.prompts.service import History, LabelResult, PushResult, VersionView
    from gateway.prompts.store import EvalRecord, LabelMove, PromptSummary, VersionRecord


# -- models --------------------------------------------------------------------------------


class PushIn(BaseModel):
    source: str = Field(..., min_length=1, description="The prompt file's YAML text.")
    dataset: str | None = Field(None, description="The golden dataset as JSONL text (replaces `dataset:` paths).")
    message: str = Field(..., min_length=1, description="Why this change (like a commit message).")
    ticket: str | None = Field(None, max_length=200, description="A ticket id for the audit log.")
    origin: str | None = Field(None, max_length=500,
                               description="The file name problems and warnings cite (default: `source`).")


class VersionOut(BaseModel):
    name: str
    version: int
    sha256: str
    author: str
    message: str
    ticket: str | None
    created_at: UtcDateTime
    key_id: str = Field(..., description="The signing key's id.")

    @classmethod
    def of(cls, record: VersionRecord) -> VersionOut:
        return cls(name=record.name, version=record.version, sha256=record.sha256, author=record.author,
                   message=record.message, ticket=record.ticket, created_at=record.created_at, key_id=record.key_id)


class PushOut(VersionOut):
    created: bool = Field(..., description="False when identical content already was this version.")
    warnings: list[str]

    @classmethod
    def of_result(cls, result: PushResult) -> PushOut:
        return cls(**VersionOut.of(result.version).model_dump(), created=result.created,
                   warnings=list(result.warnings))


class LabelIn(BaseModel):
    version: int = Field(..., ge=1)
    force: bool = Field(False, description="Skip the evaluation gate of a protected label (needs a reason).")
    reason: str | None = None
    ticket: str | None = Field(None, max_length=200)


class PromoteIn(BaseModel):
    from_label: str = "staging"
    to_label: str = "production"
    force: bool = Field(False, description="Skip the evaluation gate of a protected label (needs a reason).")
    reason: str | None = None
    ticket: str | None = Field(None, max_length=200)


class RollbackIn(BaseModel):
    reason: str | None = None
    ticket: str | None = Field(None, max_length=200)


class LabelOut(BaseModel):
    name: str
    label: str
    from_version: int | None
    to_version: int
    changed: bool
    forced: bool
    eval_id: int | None = Field(None, description="The passing evaluation that allowed a protected move.")

    @classmethod
    def of(cls, result: LabelResult) -> LabelOut:
        return cls(name=result.name, label=result.label, from_version=result.from_version,
                   to_version=result.to_version, changed=result.changed, forced=result.forced,
                   eval_id=result.eval_id)


class SummaryOut(BaseModel):
    name: str
    latest: int
    labels: dict[str, int]
    updated_at: UtcDateTime
    author: str

    @classmethod
    def of(cls, summary: PromptSummary) -> SummaryOut:
        return cls(name=summary.name, latest=summary.latest, labels=summary.labels, updated_at=summary.updated_at,
                   author=summary.author)


class EvalOut(BaseModel):
    id: int
    name: str
    version: int
    model: str
    started_at: UtcDateTime
    finished_at: UtcDateTime
    passed: bool
    score: float
    pass_rate: float
    cases: int
    passed_cases: int
    cost_usd: float
    actor: str
    results: list[dict[str, Any]] = Field(..., description="Per case: passed, score, cost, latency, checks.")

    @classmethod
    def of(cls, record: EvalRecord) -> EvalOut:
        return cls(id=record.id, name=record.name, version=record.version, model=record.model,
                   started_at=record.started_at, finished_at=record.finished_at, passed=record.passed,
                   score=record.score, pass_rate=record.pass_rate, cases=record.cases,
                   passed_cases=record.passed_cases, cost_usd=record.cost_usd, actor=record.actor,
                   results=record.results)


class ShowOut(VersionOut):
    labels: dict[str, int]
    integrity: str = Field(..., description="'verified', or why the stored version must not be served.")
    source: str = Field(..., description="The version rendered as YAML.")
    document: dict[str, Any] | None = Field(None, description="The version's canonical document.")
    latest_eval: EvalOut | None

    @classmethod
    def of_view(cls, view: VersionView) -> ShowOut:
        return cls(
            **VersionOut.of(view.record).model_dump(), labels=view.labels, integrity=view.integrity or "verified",
            source=view.source, document=view.spec.model_dump(mode="json") if view.spec is not None else None,
            latest_eval=EvalOut.of(view.latest_eval) if view.latest_eval is not None else None,
        )


class MoveOut(BaseModel):
    id: int
    label: str
    from_version: int | None
    to_version: int
    action: str
    forced: bool
    actor: str
    reason: str | None
    ticket: str | None
    at: UtcDateTime

    @classmethod
    def of(cls, move: LabelMove) -> MoveOut:
        return cls(id=move.id, label=move.label, from_version=move.from_version, to_version=move.to_version,
                   action=move.action, forced=move.forced, actor=move.actor, reason=move.reason,
                   ticket=move.ticket, at=move.at)


class HistoryOut(BaseModel):
    name: str
    labels: dict[str, int]
    versions: list[VersionOut]
    moves: list[MoveOut]

    @classmethod
    def of(cls, name: str, history: History) -> HistoryOut:
        return cls(name=name, labels=history.labels, versions=[VersionOut.of(v) for v in history.versions],
                   moves=[MoveOut.of(move) for move in history.moves])


class DiffOut(BaseModel):
    name: str
    a: str
    b: str
    diff: str = Field(..., description="Unified diff of the two versions' rendered sources.")


