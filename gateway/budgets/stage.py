"""The budget stage: reserve a request's worst case before the upstream call, settle after.

Worst case = prompt tokens * input price + output limit * output price * n, where the output
limit is the request's ``max_completion_tokens``/``max_tokens``, else the model's maximum
output from the price map, else ``budgets.default_max_output_tokens``; taken over every
deployment the request may reach (fallbacks included), so whichever one answers, the
reservation covers it. The reservation is atomic across replicas (see the backends): a team
can never have more in flight plus spent than its hard limit.

After the answer, the reservation is released and the actual cost charged (``ctx.cost``, set
by the upstream stage from the reported usage): at once for a JSON answer, in a finisher for a
stream (finishers run after ``price_usage``). A failed or cancelled request is charged what it
is known to have cost, usually nothing. When the upstream reported no usage, the gateway
counts it itself (prompt from the request, output from what was relayed) — this also holds
for teams without a budget, so the ledger is never silently zero.

A refusal is a 429 ``budget_exceeded`` naming the team, the limit, the period's spend and
when it resets; it reserved nothing and costs nothing. If the counters cannot be reached, a
hard budget refuses with 503 ``budget_unavailable`` (fail closed: spending blind could break
the promise) and a soft one admits, alerts, and charges the spend once Redis is back.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

from gateway.budgets.alerts import BudgetMetrics
from gateway.budgets.backend import BudgetBackend, BudgetUnavailable, Refusal, Reservation
from gateway.budgets.policy import BudgetBook, Scope, TeamBudget
from gateway.context import Endpoint, JsonReply, Reply, RequestContext, Usage
from gateway.errors import RateLimited, ServiceUnavailable
from gateway.pipeline_types import Handler
from gateway.pricing import from_nanos, to_nanos
from gateway.tokens import TokenCounter, Tokenizer

log = logging.getLogger("gateway.budget")

# Prompts larger than this are counted on a worker thread so the event loop keeps serving.
_THREAD_COUNT_BYTES = 32 * 1024
_UNAVAILABLE_LOG_EVERY_S = 10.0


class Budget:
    """Pipeline stage (see the module docstring). ``backend`` is Redis or in-process."""

    def __init__(
        self,
        backend: BudgetBackend,
        tokens: TokenCounter,
        book: BudgetBook,
        metrics: BudgetMetrics,
        *,
        default_max_output_tokens: int,
        tokens_ready: asyncio.Future[None] | None = None,
    ) -> None:
        self.backend = backend
        self.tokens = tokens
        self.book = book
        self._metrics = metrics
        self._default_max_out = default_max_output_tokens
        self._unavailable_logged: dict[str, float] = {}
        self._tokens_ready = tokens_ready  # tokenizers still being built after start-up

    async def __call__(self, ctx: RequestContext, call_next: Handler) -> Reply:
        ready = self._tokens_ready
        if ready is not None:
            if not ready.done():
                await asyncio.shield(ready)  # several requests may wait for it at once
            ready.result()  # re-raises a failed build
            self._tokens_ready = None
        principal = ctx.principal
        budget = self.book.for_team(ctx.catalog, principal.team) if principal is not None else None
        if budget is None or not ctx.deployments:
            return self._meter(ctx, await call_next(ctx), None)
        prompt = await self._prompt_tokens(ctx)
        worst = self.worst_case(ctx, prompt)
        if worst <= 0:
            # Free deployments: nothing to hold, nothing to charge.
            return self._meter(ctx, await call_next(ctx), prompt)
        assert principal is not None and ctx.alias is not None
        scopes = budget.scopes_for(principal.key_id, ctx.alias.name)
        outcome: Reservation | Refusal | None
        try:
            outcome = await self.backend.reserve(
                budget, scopes, worst, request_id=ctx.request_id, key_id=principal.key_id, alias=ctx.alias.name
            )
        except BudgetUnavailable as exc:
            self._unavailable(ctx, budget, scopes, exc)  # raises for a hard budget
            outcome = None
        if isinstance(outcome, Refusal):
            raise self._refuse(ctx, budget, outcome, worst)
        ctx.budget_status = "admitted" if outcome is not None else "unchecked"
        try:
            reply = await call_next(ctx)
        except BaseException:
            # Failed or cancelled before an answer: charge what is known (normally nothing).
            self._settle(ctx, budget, scopes, outcome)
            raise
        if isinstance(reply, JsonReply):
            self._count_json(ctx, reply, prompt)
            self._settle(ctx, budget, scopes, outcome)
            return reply
        relayed: list[bytes] = []
        reply.events = _tap(reply.events, relayed)

        def finish(ctx: RequestContext) -> None:
            self._count_stream(ctx, relayed, prompt)
            self._settle(ctx, budget, scopes, outcome)

        ctx.on_finish(finish)
        return reply

    # -- cost estimates ------------------------------------------------------------------

    def worst_case(self, ctx: RequestContext, prompt: dict[int, int]) -> int:
        """The most this request can cost on any of its deployments, in nano-USD."""
        body = ctx.body
        chat = ctx.endpoint is Endpoint.CHAT
        asked = (body.get("max_completion_tokens") or body.get("max_tokens")) if chat else None
        choices = (body.get("n") or 1) if chat else 1
        worst = 0.0
        for deployment in ctx.deployments:
            price = deployment.price
            output = 0
            if chat:
                model_max = price.max_output_tokens
                if isinstance(asked, int):
                    output = min(asked, model_max) if model_max else asked
                else:
                    output = model_max or self._default_max_out
            tokens_in = prompt.get(id(self.tokens.for_deployment(deployment)), 0)
            worst = max(worst, tokens_in * price.input_per_token + output * price.output_per_token * choices)
        return to_nanos(worst)

    async def _prompt_tokens(self, ctx: RequestContext) -> dict[int, int]:
        """Prompt tokens per distinct tokenizer among the deployments (usually one)."""
        tokenizers: dict[int, Tokenizer] = {}
        for deployment in ctx.deployments:
            tokenizer = self.tokens.for_deployment(deployment)
            tokenizers.setdefault(id(tokenizer), tokenizer)
        endpoint = _endpoint(ctx)

        def count() -> dict[int, int]:
            return {key: self.tokens.count_prompt(tok, endpoint, ctx.body) for key, tok in tokenizers.items()}

        if len(ctx.raw_body) > _THREAD_COUNT_BYTES:
            return await asyncio.to_thread(count)
        return count()

    def _prompt_for(self, ctx: RequestContext, prompt: dict[int, int] | None) -> int:
        assert ctx.deployment is not None
        tokenizer = self.tokens.for_deployment(ctx.deployment)
        if prompt is not None and id(tokenizer) in prompt:
            return prompt[id(tokenizer)]
        return self.tokens.count_prompt(tokenizer, _endpoint(ctx), ctx.body)

    # -- usage when the upstream reported none -------------------------------------------

    def _meter(self, ctx: RequestContext, reply: Reply, prompt: dict[int, int] | None) -> Reply:
        if isinstance(reply, JsonReply):
            self._count_json(ctx, reply, prompt)
            return reply
        relayed: list[bytes] = []
        reply.events = _tap(reply.events, relayed)
        ctx.on_finish(lambda ctx: self._count_stream(ctx, relayed, prompt))
        return reply

    def _count_json(self, ctx: RequestContext, reply: JsonReply, prompt: dict[int, int] | None) -> None:
        if ctx.usage is not None or ctx.deployment is None or reply.status != 200:
            return
        completion = 0
        if ctx.endpoint is Endpoint.CHAT and reply.data is not None:
            completion = self.tokens.completion_tokens(ctx.deployment, reply.data)
        self._set_usage(ctx, self._prompt_for(ctx, prompt), completion)

    def _count_stream(self, ctx: RequestContext, relayed: list[bytes], prompt: dict[int, int] | None) -> None:
        if ctx.usage is not None or ctx.deployment is None or not relayed:
            return
        completion = self.tokens.stream_completion_tokens(ctx.deployment, relayed)
        self._set_usage(ctx, self._prompt_for(ctx, prompt), completion)

    @staticmethod
    def _set_usage(ctx: RequestContext, prompt_tokens: int, completion_tokens: int) -> None:
        assert ctx.deployment is not None
        ctx.usage = Usage(prompt_tokens, completion_tokens)
        ctx.cost = ctx.deployment.price.cost(prompt_tokens, completion_tokens)

    # -- outcomes ------------------------------------------------------------------------

    def _settle(
        self,
        ctx: RequestContext,
        budget: TeamBudget,
        scopes: tuple[Scope, ...],
        outcome: Reservation | None,
    ) -> None:
        cost = to_nanos(ctx.cost)  # exactly what the ledger row will say
        if outcome is not None:
            self.backend.settle(outcome, cost)
        else:
            self.backend.charge(budget, scopes, cost, request_id=ctx.request_id)

    def _refuse(self, ctx: RequestContext, budget: TeamBudget, refusal: Refusal, worst: int) -> RateLimited:
        ctx.budget_status = "rejected"
        scope = refusal.scope
        win = refusal.window
        now = datetime.now(UTC)
        self._metrics.rejections.labels(budget.team, scope.label).inc()
        who = f"Team '{budget.team}'" if scope.kind == "team" else (
            f"The {scope.kind} budget '{scope.name}' of team '{budget.team}'"
        )
        message = (
            f"{who} has spent ${from_nanos(refusal.spent):.2f} of its {win.period} budget of "
            f"${scope.limit_usd:.2f} (${from_nanos(refusal.reserved):.2f} more is held by requests in flight); "
            f"this request could cost up to ${from_nanos(worst):.4f}. The budget resets at {win.resets_at}."
        )
        return RateLimited(
            message,
            code="budget_exceeded",
            headers={"retry-after": str(win.seconds_left(now)), "x-should-retry": "false"},
            extra={
                "team": budget.team,
                "budget": scope.label,
                "limit_usd": scope.limit_usd,
                "spent_usd": from_nanos(refusal.spent),
                "reserved_usd": from_nanos(refusal.reserved),
                "period": win.period,
                "resets_at": win.resets_at,
            },
        )

    def _unavailable(
        self, ctx: RequestContext, budget: TeamBudget, scopes: tuple[Scope, ...], exc: BudgetUnavailable
    ) -> None:
        """Fail closed (503) when any applicable scope is hard; otherwise log, count and return."""
        hard = any(scope.hard for scope in scopes)
        outcome = "refused" if hard else "admitted"
        self._metrics.unavailable.labels(budget.team, outcome).inc()
        now = time.monotonic()
        if now - self._unavailable_logged.get(budget.team, 0.0) >= _UNAVAILABLE_LOG_EVERY_S:
            self._unavailable_logged[budget.team] = now
            log.error(
                "budget counters unavailable: hard budgets refuse, soft budgets admit",
                extra={"team": budget.team, "outcome": outcome, "error": str(exc), "request_id": ctx.request_id},
            )
        if hard:
            ctx.budget_status = "unavailable"
            raise ServiceUnavailable(
                "The budget service is unavailable, so spending cannot be checked; try again shortly.",
                code="budget_unavailable",
                headers={"retry-after": "1"},
            )


def _endpoint(ctx: RequestContext) -> str:
    return "embeddings" if ctx.endpoint is Endpoint.EMBEDDINGS else "chat"


async def _tap(events: AsyncIterator[bytes], relayed: list[bytes]) -> AsyncIterator[bytes]:
    """Pass a stream through, keeping what was relayed for a usage count if none is reported."""
    try:
        async for chunk in events:
            relayed.append(chunk)
            yield chunk
    finally:
        aclose: Any = getattr(events, "aclose", None)
        if aclose is not None:
            await aclose()
