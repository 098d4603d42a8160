"""The budget stage: reserve a request's worst case before the upstream call, settle after.

Worst case = prompt tokens * input price + output limit * output price * n, where the output
limit is the request's ``max_completion_tokens``/``max_tokens``, else the model's maximum
output from the price map, else ``budgets.default_max_output_tokens``; taken over every
deployment the request may reach (fallbacks included), so whichever one answers, the
reservation covers it. The reservation is atomic across replicas (see the backends): a team
can never have more in flight plus spent than its hard limit.

After the answer, the reservation is released and the actual cost charged (``ctx.cost``, set
by the upstream stage from the reported usage). Settlement is a *usage-known* callback
(``ctx.on_usage``): ``RequestContext.finish`` runs it only after every meter (the upstream's
``price_usage``, this stage's own count) and any count they deferred, for a JSON answer and a
stream alike, so it can never charge a cost that is not priced yet. (It once did: registered
as a plain finisher after the upstream's, it ran first and charged streams nothing.) A failed
or cancelled request is charged what it is known to have cost, usually nothing.

When the upstream reported no usage, the gateway counts it itself (prompt from the request,
output from what was relayed) — this also holds for teams without a budget, so the ledger is
never silently zero.

A refusal is a 429 ``budget_exceeded`` naming the team, the limit, the period's spend and
when it resets; it reserved nothing and costs nothing. If the counters cannot be reached, a
hard budget refuses with 503 ``budget_unavailable`` (fail closed: spending blind could break
the promise) and a soft one admits, alerts, and charges the spend once Redis is back.

Tokenizers are built only when needed (see ``gateway.usage.tokens``): in the background for the
deployments a team with a budget can reach (at start-up and on each policy change), and on
demand otherwise, on a worker thread. The stage awaits one before a budgeted request's
reservation and before counting a JSON answer without usage. A stream's meter cannot wait:
if it finds no usage and no tokenizer yet, it *defers* the count (``ctx.defer``); the
settlement, and the record stage's recording, happen once it is counted.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from gateway.budgets.alerts import BudgetMetrics
from gateway.budgets.backend import BudgetBackend, BudgetUnavailable, Refusal, Reservation
from gateway.budgets.policy import BudgetBook, Scope, TeamBudget
from gateway.context import Endpoint, JsonReply, Reply, RequestContext, Usage
from gateway.errors import RateLimited, ServiceUnavailable
from gateway.pipeline_types import Handler
from gateway.pricing import from_nanos, to_nanos
from gateway.usage.tokens import ByteBound, TokenCounter, Tokenizer, completion_text, count_output, stream_text

if TYPE_CHECKING:
    from gateway.catalog import Catalog, Deployment

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
    ) -> None:
        self.backend = backend
        self.tokens = tokens
        self.book = book
        self._metrics = metrics
        self._default_max_out = default_max_output_tokens
        self._unavailable_logged: dict[str, float] = {}

    def use_catalog(self, catalog: Catalog) -> None:
        """Start building, in the background, the tokenizers budgeted teams will need.

        Called at start-up and with each newly applied catalog (inside the event loop). Only
        deployments reachable by a team with a budget: the others need a tokenizer only when an
        upstream reports no usage, and build it then.
        """
        self.tokens.prepare(self.book.budgeted_deployments(catalog))

    async def __call__(self, ctx: RequestContext, call_next: Handler) -> Reply:
        principal = ctx.principal
        budget = self.book.for_team(ctx.catalog, principal.team) if principal is not None else None
        if budget is None or not ctx.deployments:
            return await self._meter(ctx, await call_next(ctx), None)
        prompt = await self._prompt_tokens(ctx)
        worst = self.worst_case(ctx, prompt)
        if worst <= 0:
            # Free deployments: nothing to hold, nothing to charge.
            return await self._meter(ctx, await call_next(ctx), prompt)
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
        reserved = outcome
        # Registered before the call: whatever happens next (an answer, an error, a cancel),
        # ``finish`` settles once, after the usage is final. A failed request is charged what
        # is known to have cost, normally nothing.
        ctx.on_usage(lambda ctx: self._settle(ctx, budget, scopes, reserved))
        return await self._meter(ctx, await call_next(ctx), prompt)

    # -- cost estimates ------------------------------------------------------------------

    def worst_case(self, ctx: RequestContext, prompt: dict[str, int]) -> int:
        """The most this request can cost on any of its deployments, in nano-USD.

        ``prompt``: prompt tokens per deployment id, from :meth:`_prompt_tokens`.
        """
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
            tokens_in = prompt[deployment.id]
            worst = max(worst, tokens_in * price.input_per_token + output * price.output_per_token * choices)
        return to_nanos(worst)

    async def _prompt_tokens(self, ctx: RequestContext) -> dict[str, int]:
        """Prompt tokens per deployment id, counted once per distinct tokenizer (usually one).

        Waits for tokenizers still being built (on worker threads, shared with every request
        that needs the same one): a reservation must not be guessed.
        """
        deployments = ctx.deployments
        found = [self.tokens.built(deployment) for deployment in deployments]
        if any(tokenizer is None for tokenizer in found):
            found = list(await asyncio.gather(*(self.tokens.tokenizer(d) for d in deployments)))
        tokenizers: list[Tokenizer] = [tokenizer for tokenizer in found if tokenizer is not None]
        endpoint = _endpoint(ctx)

        def count() -> dict[str, int]:
            counted: dict[int, int] = {}
            prompt: dict[str, int] = {}
            for deployment, tokenizer in zip(deployments, tokenizers, strict=True):
                tokens = counted.get(id(tokenizer))
                if tokens is None:
                    tokens = counted[id(tokenizer)] = self.tokens.count_prompt(tokenizer, endpoint, ctx.body)
                prompt[deployment.id] = tokens
            return prompt

        if len(ctx.raw_body) > _THREAD_COUNT_BYTES:
            return await asyncio.to_thread(count)
        return count()

    def _prompt_for(self, ctx: RequestContext, prompt: dict[str, int] | None, tokenizer: Tokenizer) -> int:
        assert ctx.deployment is not None
        if prompt is not None and ctx.deployment.id in prompt:
            return prompt[ctx.deployment.id]
        return self.tokens.count_prompt(tokenizer, _endpoint(ctx), ctx.body)

    # -- usage when the upstream reported none -------------------------------------------

    async def _meter(self, ctx: RequestContext, reply: Reply, prompt: dict[str, int] | None) -> Reply:
        """Count the reply's usage if the upstream reports none: a JSON answer now, a stream
        when it ends (a meter, see ``RequestContext.finish``)."""
        if isinstance(reply, JsonReply):
            await self._count_json(ctx, reply, prompt)
            return reply
        relayed = Relayed()
        reply.events = _tap(reply.events, relayed)
        ctx.on_meter(lambda ctx: self._count_stream(ctx, relayed, prompt))
        return reply

    async def _count_json(self, ctx: RequestContext, reply: JsonReply, prompt: dict[str, int] | None) -> None:
        """Count a JSON answer's usage if the upstream reported none.

        Awaits the tokenizer if it is not built yet; if the request is cancelled meanwhile (the
        caller hung up), the count is deferred, so the spend is still counted, settled and
        recorded, once.
        """
        deployment = ctx.deployment
        if ctx.usage is not None or deployment is None or reply.status != 200:
            return
        text = completion_text(reply.data) if ctx.endpoint is Endpoint.CHAT and reply.data is not None else ""
        tokenizer = self.tokens.built(deployment)
        if tokenizer is None:
            try:
                tokenizer = await self.tokens.tokenizer(deployment)  # the build itself is not cancelled
            except asyncio.CancelledError:
                self._count_later(ctx, deployment, text, prompt)
                raise
            except Exception:
                tokenizer = self._no_tokenizer(ctx, deployment)
        self._count_with(ctx, tokenizer, text, prompt)

    def _count_stream(self, ctx: RequestContext, relayed: Relayed, prompt: dict[str, int] | None) -> None:
        """Meter: count a stream's usage if none was reported.

        Cannot wait: without a built tokenizer the count is deferred (settlement and recording
        wait for it). The relayed events are reduced to their text at once, so a deferred count
        holds only that.
        """
        deployment = ctx.deployment
        if ctx.usage is not None or deployment is None or not relayed:
            return
        text = relayed.take_text()
        tokenizer = self.tokens.built(deployment)
        if tokenizer is not None:
            self._count_with(ctx, tokenizer, text, prompt)
        elif not text and prompt is not None and deployment.id in prompt:
            self._count_with(ctx, None, text, prompt)  # no output, and the prompt is known
        else:
            self._count_later(ctx, deployment, text, prompt)

    def _count_later(
        self, ctx: RequestContext, deployment: Deployment, text: str, prompt: dict[str, int] | None
    ) -> None:
        """Defer the count until the deployment's tokenizer is built (see ``RequestContext.defer``)."""

        def now() -> None:
            # Builds inline if it must (or waits for the build in flight): blocks the loop, but
            # only when nothing can wait (see the record stage), and the spend is never lost.
            self._count_with(ctx, self.tokens.for_deployment(deployment), text, prompt)

        async def wait() -> None:
            tokenizer: Tokenizer
            try:
                tokenizer = await self.tokens.tokenizer(deployment)
            except asyncio.CancelledError:
                now()
                raise
            except Exception:
                tokenizer = self._no_tokenizer(ctx, deployment)
            self._count_with(ctx, tokenizer, text, prompt)

        ctx.defer(wait, now)
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return  # no loop to build on: whoever takes the work calls `now`
        self.tokens.prepare((deployment,))  # start the build now, not when the record's task runs

    @staticmethod
    def _no_tokenizer(ctx: RequestContext, deployment: Deployment) -> Tokenizer:
        """Not expected (a failed build gives ByteBound already): an upper bound still counts,
        and the reservation is settled rather than leaked."""
        log.exception("no tokenizer for %s", deployment.label, extra={"request_id": ctx.request_id})
        return ByteBound()

    def _count_with(
        self, ctx: RequestContext, tokenizer: Tokenizer | None, text: str, prompt: dict[str, int] | None
    ) -> None:
        """Set the usage and cost from the answer's ``text`` and the prompt.

        ``tokenizer`` may be ``None`` only when ``text`` is empty and ``prompt`` has the count.
        If counting fails, settlement still runs (it is a usage-known callback): the
        reservation never leaks.
        """
        if tokenizer is None:
            assert ctx.deployment is not None and prompt is not None and not text
            self._set_usage(ctx, prompt[ctx.deployment.id], 0)
        else:
            self._set_usage(ctx, self._prompt_for(ctx, prompt, tokenizer), count_output(tokenizer, text))

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


class Relayed:
    """What a stream relayed, kept in case the upstream reports no usage and it must be counted.

    An upstream that reports usage (the gateway asks OpenAI-compatible ones to) never needs
    it, but that is only known at the end. Raw SSE is ~10x the text it carries, so past
    ``compact_at`` bytes the events are reduced to their text: a long stream holds its answer's
    text, not its whole wire form, and short streams pay nothing.
    """

    __slots__ = ("_chunks", "_compact_at", "_size", "_texts")

    def __init__(self, compact_at: int = 256 * 1024) -> None:
        self._chunks: list[bytes] = []
        self._texts: list[str] = []
        self._size = 0
        self._compact_at = compact_at

    def append(self, chunk: bytes) -> None:
        # The relay yields whole events, so a chunk boundary never splits one.
        self._chunks.append(chunk)
        self._size += len(chunk)
        if self._size >= self._compact_at:
            self._texts.append(stream_text(self._chunks))
            self._chunks.clear()
            self._size = 0

    def __bool__(self) -> bool:
        return bool(self._chunks or self._texts)

    def take_text(self) -> str:
        """The output text relayed so far; the buffers are released."""
        text = "".join([*self._texts, stream_text(self._chunks)])
        self._chunks.clear()
        self._texts.clear()
        self._size = 0
        return text


async def _tap(events: AsyncIterator[bytes], relayed: Relayed) -> AsyncIterator[bytes]:
    """Pass a stream through, keeping what was relayed for a usage count if none is reported."""
    try:
        async for chunk in events:
            relayed.append(chunk)
            yield chunk
    finally:
        aclose: Any = getattr(events, "aclose", None)
        if aclose is not None:
            await aclose()
