"""Stage 8, budget: reserve a request's worst case before the upstream call, settle after.

Worst case = prompt tokens * input price + output limit * output price * n, where the output
limit is the request's ``max_completion_tokens``/``max_tokens``, else the model's maximum
output from the price map, else ``budgets.default_max_output_tokens``; taken over every
deployment the request may reach (fallbacks included), so whichever one answers, the
reservation covers it. The reservation is atomic across replicas (see the backends): a team
can never have more in flight plus spent than its hard limit.

After the answer, the reservation is released and the actual cost charged (``ctx.cost``, made
final by the usage stage). Settlement is a *usage-known* callback (``ctx.on_usage``):
``RequestContext.finish`` runs it only after every meter and any count they deferred, for a
JSON answer and a stream alike, so it can never charge a cost that is not priced yet. (It once
did: registered as a plain finisher after the upstream's, it ran first and charged streams
nothing.) A failed or cancelled request is charged what it is known to have cost, usually
nothing. Counting tokens is the usage stage's job; this stage counts only the prompt, for the
reservation, and leaves the count on ``ctx.prompt_tokens`` so it is not made twice.

A shadow copy (``ctx.is_shadow``) reserves and settles against the team's shadow scope only
(``budget.shadow_limit_usd``, always hard): the team's own counters never see it, and a spent
shadow scope refuses the copy, which nobody is waiting for.

A refusal is a 429 ``budget_exceeded`` naming the team, the limit, the period's spend and
when it resets; it reserved nothing and costs nothing. If the counters cannot be reached, a
hard budget refuses with 503 ``budget_unavailable`` (fail closed: spending blind could break
the promise) and a soft one admits, alerts, and charges the spend once Redis is back.

The prompt's tokens are first *bounded*, not counted: one token per UTF-8 byte of what the
count would read (a BPE token covers at least one byte), with the same framing and image
estimate. The bound costs microseconds and no tokenizer, where a tokenizer costs 3-6 MiB for
the life of the process and ~0.3 s to build (tiktoken's 40-50 MiB, once counting is frequent).
A reservation of the bound is never too small. The stage counts exactly (building the tokenizer
once, on a worker thread) only when the bound is refused, so a request that fits exactly is
never refused because of the bound, or when the bounded reservation is over
``BOUND_SHARE`` (1 %) of a hard limit it counts against, so what a bound overstates is never a
meaningful share of a budget (a request as dear as a hundredth of its team's budget is counted
before it reserves).
Settlement charges the real cost either way. A team sending requests that are small against its
limit never needs a tokenizer.

When the cache and the budget both live in Redis, the reservation is sent beside the cache
lookup (``begin``, called by the cache stage): on a miss it is already back when the request
gets here, one round trip instead of two in a row; on a hit the cache releases it unused (a
hit is never charged nor refused, and its reservation is given back at once). A request that
needs an exact count before it reserves still reserves here, after the usage stage.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

from gateway.budgets.alerts import BudgetMetrics
from gateway.budgets.backend import BudgetBackend, BudgetUnavailable, Refusal, Reservation
from gateway.budgets.policy import BudgetBook, Scope, TeamBudget
from gateway.context import Endpoint, Reply, RequestContext
from gateway.errors import RateLimited, ServiceUnavailable
from gateway.pipeline_types import Handler
from gateway.pricing import from_nanos, to_nanos
from gateway.throttled_log import ThrottledLog

log = logging.getLogger("gateway.budget")


class PromptCounter(Protocol):
    """Counting is the usage stage's (``gateway.usage.MeterUsage`` is one); the budget asks it."""

    def prompt_bound(self, ctx: RequestContext) -> int:
        """An upper bound of the prompt's tokens on any deployment, counted without a tokenizer."""
        ...

    async def prompt_tokens(self, ctx: RequestContext) -> dict[str, int]:
        """Prompt tokens per deployment id in ``ctx.deployments``, waiting for tokenizers being built."""
        ...


_UNAVAILABLE_LOG_EVERY_S = 10.0
#: A bounded reservation is used when it is at most this share of the smallest hard limit.
BOUND_SHARE = 0.01


def _bound_is_small(worst: int, scopes: tuple[Scope, ...]) -> bool:
    """Whether a reservation of ``worst`` (made with the prompt's bound) is small enough that
    what it overstates cannot matter: at most ``BOUND_SHARE`` of every hard limit it counts
    against (soft limits refuse nothing)."""
    return all(worst <= scope.limit_nanos * BOUND_SHARE for scope in scopes if scope.hard)


@dataclass(frozen=True, slots=True)
class _Plan:
    """What a request would hold: its team's budget, the scopes it counts against, and its
    worst case (nano-USD), made with the exact prompt count or with its bound."""

    budget: TeamBudget
    scopes: tuple[Scope, ...]
    exact: bool
    worst: int

    @property
    def counts_first(self) -> bool:
        """Whether the prompt must be counted exactly before reserving: a bound that is not
        small against the limits (``BOUND_SHARE``)."""
        return not self.exact and not _bound_is_small(self.worst, self.scopes)


class ReservationAhead:
    """A reservation sent beside the cache lookup (``Budget.begin``): the budget stage takes it
    on a miss; the cache releases it otherwise (a hit, an error before the budget stage)."""

    __slots__ = ("_backend", "plan", "task")

    def __init__(
        self, plan: _Plan, task: asyncio.Task[Reservation | Refusal | BudgetUnavailable], backend: BudgetBackend
    ) -> None:
        self.plan = plan
        self.task = task
        self._backend = backend

    def release(self) -> None:
        """Give back what it held, once its answer is in. Never cancelled: a cancelled
        reservation may still have been applied, and would then be held until it expires."""
        if self.task.done():
            self._drop(self.task)
        else:
            self.task.add_done_callback(self._drop)

    def _drop(self, task: asyncio.Task[Reservation | Refusal | BudgetUnavailable]) -> None:
        if task.cancelled():
            return  # the backend releases what a cancelled reservation may have applied
        error = task.exception()  # unavailability is a value here: an exception is a bug
        if error is not None:
            log.error("a budget reservation begun early failed", exc_info=error)
            return
        outcome = task.result()
        if isinstance(outcome, Reservation):
            self._backend.settle(outcome, 0)


class Budget:
    """Pipeline stage (see the module docstring). ``backend`` is Redis or in-process."""

    def __init__(
        self,
        backend: BudgetBackend,
        counter: PromptCounter,
        book: BudgetBook,
        metrics: BudgetMetrics,
        *,
        default_max_output_tokens: int,
    ) -> None:
        self.backend = backend
        self.counter = counter
        self.book = book
        self._metrics = metrics
        self._default_max_out = default_max_output_tokens
        self._unavailable_logs: dict[str, ThrottledLog] = {}  # per team: one team's outage log hides no other's
        # Reservations begun early, until done: the loop keeps only weak references to tasks.
        self._early: set[asyncio.Task[Reservation | Refusal | BudgetUnavailable]] = set()

    async def __call__(self, ctx: RequestContext, call_next: Handler) -> Reply:
        head = ctx.head_start
        if type(head) is ReservationAhead:  # sent beside the cache lookup (``begin``)
            ctx.head_start = None
            plan = head.plan
            outcome = self._outcome(ctx, plan, await head.task)
        else:
            found = self._plan(ctx)
            if found is None:
                return await call_next(ctx)
            plan = found
            if plan.counts_first:
                plan = await self._counted(ctx, plan)
            if plan.worst <= 0:
                # Free deployments: nothing to hold, nothing to charge.
                return await call_next(ctx)
            outcome = await self._reserve(ctx, plan)
        if isinstance(outcome, Refusal) and not plan.exact:
            # The bound did not fit: the exact count (a tokenizer, built once, on a worker
            # thread) decides. Only requests this close to a limit ever pay for it.
            plan = await self._counted(ctx, plan)
            outcome = await self._reserve(ctx, plan)
        if isinstance(outcome, Refusal):
            raise self._refuse(ctx, plan.budget, outcome, plan.worst)
        ctx.budget_status = "admitted" if outcome is not None else "unchecked"
        reserved = outcome
        budget, scopes = plan.budget, plan.scopes
        # Registered before the call: whatever happens next (an answer, an error, a cancel),
        # ``finish`` settles once, after the usage is final. A failed request is charged what
        # is known to have cost, normally nothing.
        ctx.on_usage(lambda ctx: self._settle(ctx, budget, scopes, reserved))
        return await call_next(ctx)

    def begin(self, ctx: RequestContext) -> ReservationAhead | None:
        """Send this request's reservation now, before the cache knows whether it will be needed.

        The cache stage calls it just before its lookup, so that on a miss the reservation is
        already on its way (or back) when the request gets here: the two round trips to Redis
        overlap instead of following each other. On a hit the cache releases it unused. Only
        the common case starts early: a bounded reservation small against the team's limits
        (a request that needs an exact count, or nothing to hold, goes the usual way, here)."""
        plan = self._plan(ctx)
        if plan is None or plan.worst <= 0 or plan.counts_first:
            return None
        task = asyncio.get_running_loop().create_task(self._reserve_or_unavailable(ctx, plan))
        self._early.add(task)
        task.add_done_callback(self._early.discard)
        return ReservationAhead(plan, task, self.backend)

    def _plan(self, ctx: RequestContext) -> _Plan | None:
        """What this request would hold, with the prompt bounded unless it was counted already;
        ``None`` when no budget applies."""
        principal = ctx.principal
        budget = self.book.for_team(ctx.catalog, principal.team) if principal is not None else None
        if budget is None or not ctx.deployments:
            return None
        assert principal is not None and ctx.alias is not None
        # A shadow copy is charged to the team's shadow scope alone, never to its budget.
        scopes = (budget.shadow_scope,) if ctx.is_shadow else budget.scopes_for(principal.key_id, ctx.alias.name)
        prompt = ctx.prompt_tokens  # counted exactly already when a context window could matter
        exact = prompt is not None and all(d.id in prompt for d in ctx.deployments)
        if prompt is None or not exact:
            bound = self.counter.prompt_bound(ctx)
            prompt = {d.id: bound for d in ctx.deployments}
        return _Plan(budget, scopes, exact, self.worst_case(ctx, prompt))

    async def _counted(self, ctx: RequestContext, plan: _Plan) -> _Plan:
        """``plan`` with the prompt counted exactly (for the deployments the request may still use)."""
        prompt = ctx.prompt_tokens = await self.counter.prompt_tokens(ctx)
        return _Plan(plan.budget, plan.scopes, True, self.worst_case(ctx, prompt))

    async def _reserve(self, ctx: RequestContext, plan: _Plan) -> Reservation | Refusal | None:
        """Reserve the plan's worst case; ``None`` when the counters are unreachable and the budget is soft."""
        return self._outcome(ctx, plan, await self._reserve_or_unavailable(ctx, plan))

    async def _reserve_or_unavailable(
        self, ctx: RequestContext, plan: _Plan
    ) -> Reservation | Refusal | BudgetUnavailable:
        # Unavailability is returned, not raised: a reservation begun early may be released
        # unused, and only a request that needed it must fail or be counted for it.
        assert ctx.principal is not None and ctx.alias is not None
        try:
            return await self.backend.reserve(
                plan.budget, plan.scopes, plan.worst,
                request_id=ctx.request_id, key_id=ctx.principal.key_id, alias=ctx.alias.name,
            )
        except BudgetUnavailable as exc:
            return exc

    def _outcome(
        self, ctx: RequestContext, plan: _Plan, outcome: Reservation | Refusal | BudgetUnavailable
    ) -> Reservation | Refusal | None:
        if isinstance(outcome, BudgetUnavailable):
            self._unavailable(ctx, plan.budget, plan.scopes, outcome)  # raises for a hard budget
            return None
        return outcome

    # -- cost estimates ------------------------------------------------------------------

    def worst_case(self, ctx: RequestContext, prompt: dict[str, int]) -> int:
        """The most this request can cost on any of its deployments, in nano-USD.

        ``prompt``: prompt tokens per deployment id, from the counter's ``prompt_tokens``.
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
        team_log = self._unavailable_logs.get(budget.team)
        if team_log is None:
            team_log = self._unavailable_logs[budget.team] = ThrottledLog(
                log, every_s=_UNAVAILABLE_LOG_EVERY_S, level=logging.ERROR
            )
        team_log.log(
            "budget counters unavailable: hard budgets refuse, soft budgets admit",
            team=budget.team, outcome=outcome, error=str(exc), request_id=ctx.request_id,
        )
        if hard:
            ctx.budget_status = "unavailable"
            raise ServiceUnavailable(
                "The budget service is unavailable, so spending cannot be checked; try again shortly.",
                code="budget_unavailable",
                headers={"retry-after": "1"},
            )
