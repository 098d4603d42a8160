"""The LLM judge (issue 14, scope 1 c): scripted judge answers, through the core handler.

The judge model is replaced by scripts: an async ``complete`` for the evaluator's logic, and a
terminal handler behind a real :class:`Core` for the call through the gateway's own routing
(an internal request of origin ``eval``, for the evaluation team or forked from the scored one).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import orjson
import pytest

from gateway.auth import Principal
from gateway.context import Endpoint, JsonReply, Origin, Reply, RequestContext
from gateway.core import Core
from gateway.errors import PermissionDenied
from gateway.scoring import Evaluator, Verdict
from gateway.scoring.judge import JUDGE_PROMPT, JudgeError, LlmJudgeEvaluator, core_completion, parse_verdicts
from support.budgets import catalog_of, priced_models

CONTEXT = "Annual plans can be refunded within 30 days of purchase. Monthly plans are not refundable."
ANSWER = "You can get a refund within 60 days. Monthly plans are not refundable. Hope this helps!"
VERDICTS = {
    "claims": [
        {"claim": "You can get a refund within 60 days.", "verdict": "unsupported", "reason": "context says 30 days"},
        {
            "claim": "Monthly plans are not refundable.",
            "verdict": "supported",
            "reason": "'Monthly plans are not refundable.'",
        },
    ]
}
CATALOG = catalog_of(priced_models(), {"teams": {"support": {}}})
EVAL_TEAM = Principal("eval", "admin", frozenset({"app"}))


def scripted(answer: str, seen: list[dict[str, Any]] | None = None) -> Any:
    async def complete(body: dict[str, Any]) -> str:
        if seen is not None:
            seen.append(body)
        return answer

    return complete


async def test_the_judges_verdicts_make_the_score_and_the_claims() -> None:
    seen: list[dict[str, Any]] = []
    judge = LlmJudgeEvaluator(scripted("Here you go:\n" + json.dumps(VERDICTS) + "\nDone.", seen))
    assert isinstance(judge, Evaluator) and judge.name == "judge"
    judgement = await judge.ascore(CONTEXT, "Refund?", ANSWER)
    assert seen == [
        {
            "model": JUDGE_PROMPT,
            "stream": False,
            "variables": {"context": CONTEXT, "question": "Refund?", "answer": ANSWER},
        }
    ]
    assert [(c.text, c.verdict, c.reasons) for c in judgement.claims] == [
        ("You can get a refund within 60 days.", Verdict.UNSUPPORTED, ("context says 30 days",)),
        ("Monthly plans are not refundable.", Verdict.SUPPORTED, ("'Monthly plans are not refundable.'",)),
    ]
    # Weighted by content words: "refund" (1; "60 days" is a number) against "monthly plans refundable" (3).
    assert judgement.score == pytest.approx(1 / 4)
    assert judgement.label == "hallucinated" and judgement.evaluator == "judge"


async def test_abstentions_and_an_empty_answer() -> None:
    abstains = {"claims": [{"claim": "The passages do not say.", "verdict": "Abstention", "reason": ""}]}
    judgement = await LlmJudgeEvaluator(scripted(json.dumps(abstains))).ascore(CONTEXT, "", "The passages do not say.")
    assert judgement.score == 0.0 and judgement.claims[0].verdict is Verdict.ABSTENTION
    assert judgement.claims[0].reasons == ()
    seen: list[dict[str, Any]] = []
    empty = await LlmJudgeEvaluator(scripted("unused", seen)).ascore(CONTEXT, "q", "  ")
    assert (empty.score, empty.claims, seen) == (0.0, (), [])


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        ("I think it is fine.", "holds no JSON object"),
        ("{not json}", "is not JSON"),
        ('{"verdicts": []}', "no 'claims' list"),
        ('{"claims": ["a claim"]}', r"claims\[0\] is not an object"),
        ('{"claims": [{"claim": "x", "verdict": "probably"}]}', r"claims\[0\] has the verdict 'probably'"),
    ],
)
async def test_an_unreadable_judge_answer_is_an_error_not_a_score(answer: str, message: str) -> None:
    with pytest.raises(JudgeError, match=message):
        await LlmJudgeEvaluator(scripted(answer)).ascore(CONTEXT, "q", ANSWER)


async def test_a_judge_that_does_not_answer_in_time_is_an_error() -> None:
    async def never(body: dict[str, Any]) -> str:
        await asyncio.sleep(3600)
        return ""

    with pytest.raises(JudgeError, match="did not answer within"):
        await LlmJudgeEvaluator(never, timeout_s=0.01).ascore(CONTEXT, "q", ANSWER)


async def test_score_from_a_worker_thread_runs_the_call_on_the_gateways_loop() -> None:
    loop = asyncio.get_running_loop()
    threads: list[asyncio.AbstractEventLoop] = []

    async def complete(body: dict[str, Any]) -> str:
        threads.append(asyncio.get_running_loop())
        return json.dumps(VERDICTS)

    judge = LlmJudgeEvaluator(complete, loop=loop)
    judgement = await asyncio.to_thread(judge.score, CONTEXT, "q", ANSWER)
    assert judgement.label == "hallucinated" and threads == [loop]
    with pytest.raises(RuntimeError, match="await ascore instead"):
        judge.score(CONTEXT, "q", ANSWER)  # on the loop itself it would deadlock


def test_score_without_a_loop_runs_its_own() -> None:
    assert LlmJudgeEvaluator(scripted(json.dumps(VERDICTS))).score(CONTEXT, "q", ANSWER).label == "hallucinated"


def test_parse_verdicts_reads_at_most_64_claims() -> None:
    many = {"claims": [{"claim": f"claim {i}", "verdict": "supported"} for i in range(100)]}
    assert len(parse_verdicts(json.dumps(many))) == 64


# --- through the core handler ------------------------------------------------------------------


def judge_upstream(content: str, seen: list[RequestContext]) -> Any:
    """A terminal handler standing in for routing + the judge model: it records the request."""

    async def handler(ctx: RequestContext) -> Reply:
        seen.append(ctx)
        data = {
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}]
        }
        return JsonReply(200, orjson.dumps(data), data)

    return handler


async def test_the_judge_runs_through_the_core_as_an_evaluation_request() -> None:
    seen: list[RequestContext] = []
    core = Core(judge_upstream(json.dumps(VERDICTS), seen))
    judge = LlmJudgeEvaluator(core_completion(lambda: core, lambda: CATALOG, EVAL_TEAM))
    judgement = await judge.ascore(CONTEXT, "Refund?", ANSWER)
    assert judgement.label == "hallucinated" and len(judgement.unsupported) == 1
    (ctx,) = seen
    assert ctx.origin is Origin.EVAL and ctx.principal == EVAL_TEAM and ctx.endpoint is Endpoint.CHAT
    assert ctx.request_id.startswith("judge-") and ctx.parent_id is None and ctx.finished
    assert orjson.loads(ctx.raw_body)["model"] == "prompt:hallucination-judge"


async def test_forked_from_the_scored_request_it_acts_for_its_team() -> None:
    seen: list[RequestContext] = []
    core = Core(judge_upstream(json.dumps(VERDICTS), seen))
    parent = RequestContext(
        request_id="req-42",
        endpoint=Endpoint.CHAT,
        raw_body=b"{}",
        authorization=None,
        catalog=CATALOG,
        principal=Principal("key_9", "support", frozenset({"app"})),
    )
    judge = LlmJudgeEvaluator(core_completion(lambda: core, lambda: CATALOG, EVAL_TEAM, parent=parent))
    await judge.ascore(CONTEXT, "Refund?", ANSWER)
    (ctx,) = seen
    assert ctx.origin is Origin.EVAL and ctx.parent_id == "req-42" and ctx.principal is parent.principal


async def test_a_refused_judge_request_is_a_judge_error() -> None:
    async def refuse(ctx: RequestContext) -> Reply:
        raise PermissionDenied("Team 'support' may not use the prompt 'hallucination-judge'.")

    judge = LlmJudgeEvaluator(core_completion(lambda: Core(refuse), lambda: CATALOG, EVAL_TEAM))
    with pytest.raises(JudgeError, match=r"failed \(403\): Team 'support' may not use"):
        await judge.ascore(CONTEXT, "q", ANSWER)
    with pytest.raises(JudgeError, match="not built yet"):
        await LlmJudgeEvaluator(core_completion(lambda: None, lambda: CATALOG, EVAL_TEAM)).ascore(CONTEXT, "q", ANSWER)
