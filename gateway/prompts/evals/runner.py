"""Running a version's golden dataset through the gateway's own request path.

Each case becomes a real chat request for ``prompt:NAME@vN`` and goes through the same pipeline
as a caller's (resolve, render, route, retries, pricing, ledger, metrics), entered through the
core handler as an internal request of origin ``eval``, acting for the evaluation team: there
is no key to check, by rule (``gateway.context.Origin``). What is measured is therefore what production
would do: the rendered messages, the model alias the version names, its price and latency.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from gateway.auth import Principal
from gateway.catalog import Catalog
from gateway.context import Origin, RequestContext, StreamReply
from gateway.core import Core
from gateway.prompts.evals.evaluators import CaseOutcome, EvaluatorSet

if TYPE_CHECKING:
    # Types only: the source module imports the evaluators, so a runtime import would cycle.
    from gateway.prompts.source import GoldenCase, PromptSpec

log = logging.getLogger("gateway.prompts.evals")

_OUTPUT_CHARS = 2000  # enough to see why a case failed, without storing whole essays


@dataclass(frozen=True, slots=True)
class EvalReport:
    name: str
    version: int
    model: str
    passed: bool
    score: float
    pass_rate: float
    passed_cases: int
    cost_usd: float
    started_at: datetime
    finished_at: datetime
    cases: list[dict[str, Any]]


class EvalRunner:
    def __init__(
        self,
        core: Callable[[], Core | None],
        catalog: Callable[[], Catalog],
        principal: Principal,
        evaluators: EvaluatorSet,
        *,
        concurrency: int = 4,
    ) -> None:
        # Getters, not values: the pipeline is built after the prompt feature, and policies reload.
        self._core = core
        self._catalog = catalog
        self._principal = principal
        self._evaluators = evaluators
        self._concurrency = concurrency

    async def run(self, name: str, version: int, spec: PromptSpec) -> EvalReport:
        core = self._core()
        if core is None:
            raise RuntimeError("the request pipeline is not built yet")
        started_at = datetime.now(UTC)
        gate = asyncio.Semaphore(self._concurrency)
        reference = f"prompt:{name}@v{version}"

        async def one(index: int, case: GoldenCase) -> dict[str, Any]:
            async with gate:
                return await self._case(core, reference, index, case)

        cases = list(await asyncio.gather(*(one(index, case) for index, case in enumerate(spec.golden))))
        passed_cases = sum(1 for case in cases if case["passed"])
        pass_rate = passed_cases / len(cases) if cases else 0.0
        return EvalReport(
            name=name,
            version=version,
            model=spec.model,
            passed=bool(cases) and pass_rate >= spec.evaluation.min_pass_rate,
            score=sum(case["score"] for case in cases) / len(cases) if cases else 0.0,
            pass_rate=pass_rate,
            passed_cases=passed_cases,
            cost_usd=sum(case["cost_usd"] for case in cases),
            started_at=started_at,
            finished_at=datetime.now(UTC),
            cases=cases,
        )

    async def _case(self, core: Core, reference: str, index: int, case: GoldenCase) -> dict[str, Any]:
        body: dict[str, Any] = {"model": reference, "variables": case.variables, "stream": False}
        if case.messages:
            body["messages"] = case.messages
        ctx = RequestContext.internal(
            Origin.EVAL, self._principal, self._catalog(), body, request_id=f"eval-{uuid.uuid4().hex[:24]}"
        )
        output, error = "", None
        started = time.perf_counter()
        try:
            reply = await core.run(ctx)  # prices the usage, writes the ledger row and the metrics
        finally:
            latency_ms = (time.perf_counter() - started) * 1000
        if ctx.error is not None:
            error = ctx.error.message
        elif isinstance(reply, StreamReply):
            error = "the model answered with a stream"
        elif ctx.answer is not None:
            output = ctx.answer.text
        outcome = CaseOutcome(output, ctx.cost, latency_ms, ctx.status, error)
        checks = await self._evaluators.evaluate(case.expect, outcome)
        ok = error is None and all(check.passed for check in checks)
        score = sum(check.score for check in checks) / len(checks) if error is None and checks else 0.0
        return {
            "index": index,
            "name": case.name or f"case {index + 1}",
            "passed": ok,
            "score": round(score, 6),
            "cost_usd": ctx.cost,
            "latency_ms": round(latency_ms, 3),
            "status": ctx.status,
            "output": output[:_OUTPUT_CHARS],
            "error": error,
            "checks": [check.as_dict() for check in checks],
            "request_id": ctx.request_id,
        }
