"""``/admin/prompts``: the prompt repository over HTTP, mirroring ``gateway prompts``.

Thin shells over ``PromptService``, which does the role checks, so CI pipelines and UIs get
exactly the CLI's rules: ``author`` pushes and moves ordinary labels, ``approver`` (or ``admin``)
moves protected labels, and only to an evaluated version unless forced with a reason.
"""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Depends, Query, Response

from gateway.admin.deps import get_principal, get_runtime
from gateway.admin.prompt_models import (
    DiffOut,
    EvalOut,
    HistoryOut,
    LabelIn,
    LabelOut,
    PromoteIn,
    PushIn,
    PushOut,
    RollbackIn,
    ShowOut,
    SummaryOut,
)
from gateway.auth import Principal
from gateway.errors import ServiceUnavailable
from gateway.prompts import Caller, PromptRepository, PromptService
from gateway.runtime import Runtime

router = APIRouter(prefix="/admin/prompts", tags=["prompts"])


def get_service(runtime: Runtime = Depends(get_runtime)) -> PromptService:
    if not isinstance(runtime.prompts, PromptRepository):
        raise ServiceUnavailable("The prompt repository is not enabled on this gateway.")
    return runtime.prompts.service


def get_caller(principal: Principal = Depends(get_principal)) -> Caller:
    return Caller.of(principal)


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
    source = await asyncio.to_thread(service.parse_text, body.source, dataset=body.dataset,
                                     origin=body.origin or "source")
    result = await service.push(source, caller, message=body.message, ticket=body.ticket)
    if not result.created:
        response.status_code = 200
    return PushOut.of_result(result)


@router.get("/{reference}", response_model=ShowOut, summary="Show NAME (latest), NAME@LABEL or NAME@vN")
async def show_prompt(
    reference: str, service: PromptService = Depends(get_service), caller: Caller = Depends(get_caller)
) -> ShowOut:
    return ShowOut.of_view(await service.show(reference, caller))


@router.get("/{name}/history", response_model=HistoryOut, summary="Versions and label moves")
async def prompt_history(
    name: str, service: PromptService = Depends(get_service), caller: Caller = Depends(get_caller)
) -> HistoryOut:
    return HistoryOut.of(name, await service.history(name, caller))


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
