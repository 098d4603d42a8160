"""The optional LLM judge (issue 14, scope 1 c): a model extracts the answer's claims and gives a
verdict on each against the context, through the gateway's own routing.

The judge is a prompt like any other, ``prompts/hallucination-judge`` (pushed, evaluated and
labelled with ``gateway prompts``), called as ``prompt:hallucination-judge`` (its ``production``
label) unless told otherwise. Its variables are ``context``, ``question`` and ``answer``; it
answers JSON::

    {"claims": [{"claim": "...", "verdict": "supported" | "unsupported" | "abstention",
                 "reason": "..."}]}

The call goes through :class:`gateway.core.Core` as an internal request (origin ``eval``), so it
is routed, priced, budgeted and written to the ledger like an evaluation case, and a judge
version can be rolled out like any prompt. :func:`core_completion` builds that call; tests give
the evaluator any async ``complete(body) -> text`` instead.

The evaluator keeps the synchronous :class:`~gateway.scoring.evaluator.Evaluator` interface:
``score`` called from a worker thread hands the call to the gateway's event loop (``loop``) and
waits at most ``timeout_s``; called where no loop runs (the CLI), it runs its own. ``ascore`` is
the same for callers already on the loop. A judge that fails (an error reply, a timeout, an
answer that is not the JSON above) raises :class:`JudgeError`; it never guesses a score.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, Final

import orjson

from gateway.scoring.evaluator import ClaimVerdict, Judgement, Verdict, weighted_score
from gateway.scoring.groundedness import content_words, words

if TYPE_CHECKING:
    from gateway.auth import Principal
    from gateway.catalog import Catalog
    from gateway.context import RequestContext
    from gateway.core import Core

#: The judge prompt's production label; ``prompt:hallucination-judge@v3`` pins a version.
JUDGE_PROMPT: Final = "prompt:hallucination-judge"
#: At most this many of the judge's claims are read (a runaway answer is not a bigger verdict).
MAX_CLAIMS: Final = 64

#: A chat request body (``model``, ``variables``) -> the text of the model's answer.
Complete = Callable[[dict[str, Any]], Awaitable[str]]


class JudgeError(RuntimeError):
    """The judge could not give a verdict: the call failed, timed out, or its answer is unreadable."""


def parse_verdicts(text: str) -> list[ClaimVerdict]:
    """The judge's claims from its answer: the JSON object in it (text around it is ignored)."""
    start, end = text.find("{"), text.rfind("}")
    if start < 0 or end < start:
        raise JudgeError(f"the judge's answer holds no JSON object: {text[:200]!r}")
    try:
        data = orjson.loads(text[start : end + 1])
    except orjson.JSONDecodeError as exc:
        raise JudgeError(f"the judge's answer is not JSON ({exc})") from None
    claims = data.get("claims") if isinstance(data, Mapping) else None
    if not isinstance(claims, list):
        raise JudgeError("the judge's answer has no 'claims' list")
    verdicts: list[ClaimVerdict] = []
    for index, item in enumerate(claims[:MAX_CLAIMS]):
        if not isinstance(item, Mapping) or not isinstance(item.get("claim"), str):
            raise JudgeError(f"claims[{index}] is not an object with a 'claim' string")
        try:
            verdict = Verdict(str(item.get("verdict", "")).strip().lower())
        except ValueError:
            raise JudgeError(
                f"claims[{index}] has the verdict {item.get('verdict')!r}; expected supported, "
                "unsupported or abstention"
            ) from None
        reason = item.get("reason")
        reasons = (reason.strip(),) if isinstance(reason, str) and reason.strip() else ()
        weight = float(max(1, len(content_words(words(item["claim"])))))
        verdicts.append(ClaimVerdict(item["claim"].strip(), verdict, reasons, None, weight))
    return verdicts


class LlmJudgeEvaluator:
    """Scores an answer by the judge model's per-claim verdicts (the weighted share unsupported)."""

    def __init__(
        self,
        complete: Complete,
        *,
        prompt: str = JUDGE_PROMPT,
        threshold: float = 0.0,
        loop: asyncio.AbstractEventLoop | None = None,
        timeout_s: float = 60.0,
        max_chars: int = 100_000,
    ) -> None:
        self._complete = complete
        self.prompt = prompt
        self.threshold = threshold
        self._loop = loop
        self.timeout_s = timeout_s
        self.max_chars = max_chars

    @property
    def name(self) -> str:
        return "judge"

    def body(self, context: str, question: str, answer: str) -> dict[str, Any]:
        """The chat request the judge is asked with."""
        return {
            "model": self.prompt,
            "stream": False,
            "variables": {
                "context": context[: self.max_chars],
                "question": question[: self.max_chars],
                "answer": answer[: self.max_chars],
            },
        }

    async def ascore(self, context: str, question: str, answer: str) -> Judgement:
        if not answer.strip():
            return Judgement(0.0, (), self.name, self.threshold)
        try:
            text = await asyncio.wait_for(self._complete(self.body(context, question, answer)), self.timeout_s)
        except TimeoutError:
            raise JudgeError(f"the judge did not answer within {self.timeout_s:g} s") from None
        claims = tuple(parse_verdicts(text))
        return Judgement(weighted_score(claims), claims, self.name, self.threshold)

    def score(self, context: str, question: str, answer: str) -> Judgement:
        loop = self._loop
        if loop is not None and loop.is_running():
            try:
                running = asyncio.get_running_loop()
            except RuntimeError:
                running = None
            if running is loop:
                raise RuntimeError("LlmJudgeEvaluator.score blocks: on the event loop, await ascore instead")
            future = asyncio.run_coroutine_threadsafe(self.ascore(context, question, answer), loop)
            try:
                return future.result(self.timeout_s + 1)
            except TimeoutError:
                future.cancel()
                raise JudgeError(f"the judge did not answer within {self.timeout_s:g} s") from None
        return asyncio.run(self.ascore(context, question, answer))


def core_completion(
    core: Callable[[], Core | None],
    catalog: Callable[[], Catalog],
    principal: Principal,
    *,
    parent: RequestContext | None = None,
) -> Complete:
    """A ``complete`` that runs the judge's request through the gateway's core handler.

    The request is internal, of origin ``eval``: a fork of ``parent`` (the scored request; it acts
    for the caller's team, which must be allowed the judge prompt) when given, else a request
    acting for ``principal`` (the evaluation team, ``prompts.eval_team``, as evaluations do).
    """
    from gateway.context import JsonReply, Origin
    from gateway.context import RequestContext as Context

    async def complete(body: dict[str, Any]) -> str:
        handler = core()
        if handler is None:
            raise JudgeError("the request pipeline is not built yet")
        request_id = f"judge-{uuid.uuid4().hex[:24]}"
        if parent is not None:
            ctx = parent.fork(Origin.EVAL, body=body, request_id=request_id)
        else:
            ctx = Context.internal(Origin.EVAL, principal, catalog(), body, request_id=request_id)
        reply = await handler.run(ctx)
        if ctx.error is not None:
            raise JudgeError(f"the judge's request failed ({ctx.status}): {ctx.error.message}")
        if ctx.answer is not None:
            return ctx.answer.text
        data = reply.data if isinstance(reply, JsonReply) else None
        try:
            return str(data["choices"][0]["message"]["content"] or "")  # type: ignore[index]
        except (KeyError, IndexError, TypeError):
            raise JudgeError("the judge's reply holds no answer") from None

    return complete
