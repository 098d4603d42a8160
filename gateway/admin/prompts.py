"""``/admin/prompts``: the prompt repository over HTTP, mirroring ``gateway prompts``.

Thin shells over ``PromptService``, which does the role checks, so CI pipelines and UIs get
exactly the CLI's rules: ``author`` pushes and moves ordinary labels, ``approver`` (or ``admin``)
moves protected labels, and only to an evaluated version unless forced with a reason.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Depends, Query, Response
from pydantic import BaseModel, Field

from gateway.admin.deps import get_principal, get_runtime
from gateway.admin.types import UtcDateTime
from gateway.auth import Principal
from gateway.errors import ServiceUnavailable
from gateway.prompts import Caller, PromptRepository, PromptService
from gateway.prompts.service import LabelResult, PushResult
from gateway.prompts.store import EvalRecord, LabelMove, PromptSummary, VersionRecord
from gateway.runtime import Runtime

router = APIRouter(prefix="/admin/prompts", tags=["prompts"])


def get_service(runtime: Runtime = Depends(get_runtime)) -> PromptService:
    if not isinstance(runtime.prompts, PromptRepository):
        raise ServiceUnavailable("The prompt repository is not enabled on this gateway.")
    return runtime.prompts.service


def get_caller(principal: Principal = Depends(get_principal)) -> Caller:
    return Caller.of(principal)


# -- models --------------------------------------------------------------------------------


class PushIn(BaseModel):
    source: str = Field(..., min_length=1, description="The prompt file's YAML text.")
    dataset: str | None = Field(None, description="The golden dataset as JSONL text (replaces `dataset:` paths).")
    message: str = Field(..., min_length=1, description="Why this change (like a commit message).")
    ticket: str | None = Field(None, max_length=200, description="A ticket id for the audit log.")


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


class DiffOut(BaseModel):
    name: str
    a: str
    b: str
    diff: str = Field(..., description="Unified diff of the two versions' rendered sources.")


# -- routes --------------------------------------------------------------------------------


@router.get("", response_model=list[SummaryOut], summary="List prompts, their latest version and labels")
async def list_prompts(
    service: PromptService = Depends(get_service), caller: Caller = Depends(get_caller)
) -> list[SummaryOut]:
    return [SummaryOut.of(summary) for summary in await service.list_prompts(caller)]


@router.post("", response_model=PushOut, status_code=201, summary="Push a version (author role)",
             responses={200: {"model": PushOut, "description": "Identical content: the existing version."}})
async def push_prompt(
    body: PushIn, response: Response,
    service: PromptService = Depends(get_service), caller: Caller = Depends(get_caller),
) -> PushOut:
    # The role first: parsing compiles the author's templates and renders the golden cases,
    # work no one without the role may make the gateway do. Then off the event loop: the
    # renders are bounded (gateway.prompts.render), but seconds of them must not stall /v1.
    caller.require("author", doing="Pushing a prompt")
    source = await asyncio.to_thread(service.parse_text, body.source, dataset=body.dataset)
    result = await service.push(source, caller, message=body.message, ticket=body.ticket)
    if not result.created:
        response.status_code = 200
    return PushOut.of_result(result)


@router.get("/{reference}", response_model=ShowOut, summary="Show NAME (latest), NAME@LABEL or NAME@vN")
async def show_prompt(
    reference: str, service: PromptService = Depends(get_service), caller: Caller = Depends(get_caller)
) -> ShowOut:
    view = await service.show(reference, caller)
    return ShowOut(
        **VersionOut.of(view.record).model_dump(), labels=view.labels, integrity=view.integrity or "verified",
        source=view.source, document=view.spec.model_dump(mode="json") if view.spec is not None else None,
        latest_eval=EvalOut.of(view.latest_eval) if view.latest_eval is not None else None,
    )


@router.get("/{name}/history", response_model=HistoryOut, summary="Versions and label moves")
async def prompt_history(
    name: str, service: PromptService = Depends(get_service), caller: Caller = Depends(get_caller)
) -> HistoryOut:
    history = await service.history(name, caller)
    return HistoryOut(name=name, labels=history.labels, versions=[VersionOut.of(v) for v in history.versions],
                      moves=[MoveOut.of(move) for move in history.moves])


@router.get("/{name}/diff", response_model=DiffOut, summary="Unified diff between two versions or labels")
async def prompt_diff(
    name: str,
    a: str = Query(..., description="A version (3 or v3) or a label."),
    b: str = Query(..., description="A version (3 or v3) or a label."),
    service: PromptService = Depends(get_service),
    caller: Caller = Depends(get_caller),
) -> DiffOut:
    return DiffOut(name=name, a=a, b=b, diff=await service.diff(name, a, b, caller))


@router.put("/{name}/labels/{label}", response_model=LabelOut,
            summary="Point a label at a version (approver + passing eval for protected labels)")
async def set_label(
    name: str, label: str, body: LabelIn,
    service: PromptService = Depends(get_service), caller: Caller = Depends(get_caller),
) -> LabelOut:
    result = await service.set_label(name, label, body.version, caller, force=body.force, reason=body.reason,
                                     ticket=body.ticket)
    return LabelOut.of(result)


@router.post("/{name}/promote", response_model=LabelOut,
             summary="Point to_label at from_label's version (approver + passing eval for protected labels)")
async def promote(
    name: str, body: PromoteIn,
    service: PromptService = Depends(get_service), caller: Caller = Depends(get_caller),
) -> LabelOut:
    result = await service.promote(name, body.from_label, body.to_label, caller, force=body.force,
                                   reason=body.reason, ticket=body.ticket)
    return LabelOut.of(result)


@router.post("/{name}/labels/{label}/rollback", response_model=LabelOut,
             summary="Move a label back to the version it held before its last move")
async def rollback(
    name: str, label: str, body: RollbackIn | None = None,
    service: PromptService = Depends(get_service), caller: Caller = Depends(get_caller),
) -> LabelOut:
    body = body or RollbackIn(reason=None, ticket=None)
    return LabelOut.of(await service.rollback(name, label, caller, reason=body.reason, ticket=body.ticket))


@router.post("/{name}/versions/{version}/evals", response_model=EvalOut, status_code=201,
             summary="Run the version's golden dataset through the gateway and record the result")
async def run_eval(
    name: str, version: int,
    service: PromptService = Depends(get_service), caller: Caller = Depends(get_caller),
) -> EvalOut:
    return EvalOut.of(await service.evaluate(f"{name}@v{version}", caller))


@router.get("/{name}/versions/{version}/evals", response_model=list[EvalOut], summary="Evaluation runs of a version")
async def list_evals(
    name: str, version: int,
    service: PromptService = Depends(get_service), caller: Caller = Depends(get_caller),
) -> list[EvalOut]:
    return [EvalOut.of(record) for record in await service.evaluations(name, version, caller)]
