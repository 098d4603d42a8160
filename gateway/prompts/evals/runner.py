"""Running a version's golden dataset through the gateway's own request path.

Each case becomes a real chat request for ``prompt:NAME@vN`` and goes through the same pipeline
as a caller's (resolve, render, route, retries, pricing, ledger, metrics), entered in process
with a preset principal so no key is needed. What is measured is therefore what production
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

import orjson

from gateway.auth import Principal
from gateway.catalog import Catalog
from gateway.context import Endpoint, JsonReply, RequestContext
from gateway.errors import GatewayError
from gateway.pipeline_types import Handler
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


def answer_text(data: dict[str, Any]) -> str:
    """The first choice's text, or its first tool call's arguments when it called a tool."""
    choices = data.get("choices") or []
    if not choices or not isinstance(choices[0], dict):
        return ""
    message = choices[0].get("message") or {}
    content = message.get("content")
    if isinstance(content, str) and content:
        return content
    calls = message.get("tool_calls") or []
    if calls and isinstance(calls[0], dict):
        return str((calls[0].get("function") or {}).get("arguments") or "")
    return ""


class EvalRunner:
    def __init__(
        self,
        handler: Callable[[], Handler | None],
        catalog: Callable[[], Catalog],
        principal: Principal,
        evaluators: EvaluatorSet,
        *,
        concurrency: int = 4,
    ) -> None:
        # Getters, not values: the pipeline is built after the prompt feature, and policies reload.
        self._handler = handler
        self._catalog = catalog
        self._principal = principal
        self._evaluators = evaluators
        self._concurrency = concurrency

    async def run(self, name: str, version: int, spec: PromptSpec) -> EvalReport:
        handler = self._handler()
        if handler is None:
            raise RuntimeError("the request pipeline is not built yet")
        started_at = datetime.now(UTC)
        gate = asyncio.Semaphore(self._concurrency)
        reference = f"prompt:{name}@v{version}"

        async def one(index: int, case: GoldenCase) -> dict[str, Any]:
            async with gate:
                return await self._case(handler, reference, index, case)

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

    async def _case(self, handler: Handler, reference: str, index: int, case: GoldenCase) -> dict[str, Any]:
        body: dict[str, Any] = {"model": reference, "variables": case.variables, "stream": False}
        if case.messages:
            body["messages"] = case.messages
        ctx = RequestContext(
            request_id=f"eval-{uuid.uuid4().hex[:24]}",
            endpoint=Endpoint.CHAT,
            raw_body=orjson.dumps(body),
            authorization=None,
            catalog=self._catalog(),
            principal=self._principal,  # the authenticate stage trusts an in-process principal
        )
        output, error = "", None
        started = time.perf_counter()
        try:
            reply = await handler(ctx)
            ctx.status = reply.status
            if isinstance(reply, JsonReply):
                output = answer_text(reply.data if reply.data is not None else orjson.loads(reply.body))
            else:
                error = "the model answered with a stream"
        except GatewayError as exc:
            ctx.status, ctx.error, error = exc.status, exc, exc.message
        except Exception as exc:
            # One broken case must not lose the others' results; the log has the trace.
            log.exception("evaluation case failed", extra={"request_id": ctx.request_id})
            ctx.status, error = 500, f"internal error ({type(exc).__name__})"
        finally:
            latency_ms = (time.perf_counter() - started) * 1000
            ctx.finish()  # prices the usage, writes the ledger row and the metrics
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
