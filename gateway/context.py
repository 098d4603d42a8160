"""The one typed object a request carries through the pipeline, and the replies it ends in.

Each stage reads what earlier stages set and fills in its own part; nothing is passed in
an untyped dict. A reply is either a whole JSON body or a stream of SSE events; a stream
outlives the pipeline call, so work that must wait for its end (committing spend, writing
the ledger, tracing) registers a *finisher* on the context instead of running inline.

``finish`` runs in three explicit phases, so that what must happen after something else
says so instead of relying on the order stages registered in:

1. **meter** (``on_meter``): make ``ctx.usage`` and ``ctx.cost`` final: price the usage the
   upstream reported, or count it when it reported none;
2. **usage known** (``on_usage``): act on the final usage and cost (settle a budget
   reservation). These run after every meter *and* after any counting a meter deferred;
3. **finish** (``on_finish``): everything else (store a streamed answer in the cache, record
   metrics, the access log and the ledger), innermost stage first.

Callbacks are synchronous (the server calls ``finish`` from a ``finally``). A meter that cannot
count without waiting (a tokenizer still being built) *defers* it with ``ctx.defer``; the
usage-known phase then runs when that work is done, and the record stage, whose finisher runs
last, takes the work and records the request only once it is done, in a background task.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Protocol

import orjson

if TYPE_CHECKING:
    from gateway.answer import Answer
    from gateway.auth import Principal
    from gateway.catalog import Catalog, Deployment, ModelAlias
    from gateway.errors import GatewayError
    from gateway.routing.plan import RoutingPlan

log = logging.getLogger("gateway.request")


class Endpoint(StrEnum):
    CHAT = "chat"
    EMBEDDINGS = "embeddings"


class Origin(StrEnum):
    """Who a request came from. Every stage can read it; authentication is decided by it.

    ``caller``: a client on ``/v1`` (its key is always checked). ``eval``: a golden case of an
    evaluation run. ``shadow``: a copy of a caller's request sent to a shadow target; it never
    answers anyone. Internal origins carry the principal they act for and skip the key check.
    """

    CALLER = "caller"
    EVAL = "eval"
    SHADOW = "shadow"

    @property
    def internal(self) -> bool:
        return self is not Origin.CALLER


@dataclass(slots=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(slots=True)
class JsonReply:
    """A whole JSON answer. ``body`` is sent as is; ``data`` is its parsed form, if known."""

    status: int
    body: bytes
    data: dict[str, Any] | None = None
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)


@dataclass(slots=True)
class StreamReply:
    """An SSE answer: ``events`` yields complete ``data: ...\\n\\n`` events, ending with [DONE]."""

    events: AsyncIterator[bytes]
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    status: int = 200


Reply = JsonReply | StreamReply
Finisher = Callable[["RequestContext"], None]


@dataclass(frozen=True, slots=True)
class Deferred:
    """Work a finisher left to be awaited before the request is recorded.

    ``wait`` does it without blocking the event loop; ``now`` does the same work synchronously,
    for whoever cannot wait (no record stage to wait for it, or too much already waiting): it
    may block briefly, but the work is never lost. Exactly one of the two is called; a ``wait``
    that is cancelled must still leave the work done (typically by calling ``now``).
    """

    wait: Callable[[], Awaitable[None]]
    now: Callable[[], None]


class HeadStart(Protocol):
    """A later stage's first step, begun before an earlier stage knows whether the request will
    get there (``RequestContext.head_start``). ``release`` undoes it when it never does."""

    def release(self) -> None: ...


@dataclass(slots=True)
class RequestContext:
    request_id: str
    endpoint: Endpoint
    raw_body: bytes
    authorization: bytes | None
    catalog: Catalog
    started: float = field(default_factory=time.perf_counter)
    origin: Origin = Origin.CALLER
    parent_id: str | None = None  # the request this one was forked from (a shadow's primary)
    # Filled by the stages, in pipeline order.
    principal: Principal | None = None
    body: dict[str, Any] = field(default_factory=dict)  # the request as it will go upstream
    requested_model: str = ""
    stream: bool = False
    include_usage: bool = False  # the caller asked for stream_options.include_usage
    user: str | None = None  # the caller's `user` field, for the ledger (never used as a key)
    session_id: str | None = None  # the caller's x-session-id header (a rollout's sticky subject, traces)
    # The request's trace (32 hex digits), set when it starts if tracing is on; a fork keeps
    # its parent's, so a shadow copy is an observation in its primary's trace.
    trace_id: str | None = None
    # The caller's x-data-class header (a fork carries its parent's class here, so a copy is
    # never of a lower class than the request it copies).
    data_class_header: str | None = None
    traceparent: str | None = None  # the caller's W3C traceparent header, as sent (tracing reads it)
    parent_span_id: str | None = None  # the caller's span (16 hex digits), when its traceparent was valid
    alias: ModelAlias | None = None
    prompt_name: str | None = None  # set when `model` was `prompt:NAME...`
    prompt_data_class: str | None = None  # the class the prompt version declares, if any
    prompt_version: int | None = None
    prompt_label: str | None = None
    # The request's data class (gateway.routing.data_classes), set by the route stage; None: off.
    data_class: str | None = None
    downgraded_from: str | None = None  # the alias asked for, when a budget downgrade replaced it
    # What the answer is scored against for groundedness (gateway.scoring.context): the caller's
    # ``scoring_context`` field (taken out of the body by the parse stage), else the value of the
    # prompt's declared context variable; None when there is none. Kept raw: only a sampled
    # request pays for turning it into text, off the request path.
    scoring_context: Any = None
    plan: RoutingPlan | None = None  # the route stage's decision
    deployments: tuple[Deployment, ...] = ()  # the plan's deployments, in the order to try them
    variant: str | None = None  # routing variant (e.g. "canary"), for traces and the ledger
    rollout_id: str | None = None  # the rollout that chose the variant, if any
    cache_control: str | None = None  # the caller's Cache-Control header
    cache_status: str | None = None  # HIT, MISS or BYPASS once the cache stage ran
    saved_cost: float = 0.0  # what a cache hit would have cost upstream (USD)
    budget_status: str | None = None  # "rejected" when the budget stage refused the request
    # Prompt tokens per deployment id, when the budget stage counted them for its reservation
    # (the usage stage reuses the count instead of tokenizing the prompt twice).
    prompt_tokens: dict[str, int] | None = None
    # Work a later stage began early, beside an earlier stage's wait (the budget's reservation,
    # sent with the cache lookup: ``gateway.pipeline`` explains). The later stage takes it; if
    # the request never gets there (a cache hit, an error), the stage that began it releases it.
    head_start: HeadStart | None = None
    # Filled by the upstream call and the stream relay.
    deployment: Deployment | None = None
    upstream_seconds: float = 0.0  # time spent waiting on the upstream (to first byte when streaming)
    overhead_seconds: float = 0.0  # gateway time until the answer's headers went out, upstream excluded
    # End to end, until the answer was done; set by the record stage, so work it had to wait
    # for afterwards (a deferred count) is not charged to the request's latency.
    elapsed_seconds: float | None = None
    attempts: int = 0
    answer: Answer | None = None  # the one tap on the reply (gateway.answer), set by the upstream stage
    usage: Usage | None = None
    cost: float = 0.0
    status: int = 200
    error: GatewayError | None = None
    finished: bool = False
    extra_headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    meters: list[Finisher] = field(default_factory=list)
    usage_listeners: list[Finisher] = field(default_factory=list)
    finishers: list[Finisher] = field(default_factory=list)
    deferred: list[Deferred] = field(default_factory=list)

    @property
    def team(self) -> str:
        return self.principal.team if self.principal else "anonymous"

    @property
    def is_shadow(self) -> bool:
        """A shadow copy: never answers a caller, never touches the cache or the team's budget."""
        return self.origin is Origin.SHADOW

    @classmethod
    def internal(
        cls,
        origin: Origin,
        principal: Principal,
        catalog: Catalog,
        body: dict[str, Any],
        *,
        request_id: str,
        endpoint: Endpoint = Endpoint.CHAT,
    ) -> RequestContext:
        """A request the gateway makes itself (an evaluation case), acting for ``principal``."""
        if not origin.internal:
            raise ValueError("a caller's request comes from /v1, with a key to check")
        return cls(
            request_id=request_id,
            endpoint=endpoint,
            raw_body=orjson.dumps(body),
            authorization=None,
            catalog=catalog,
            origin=origin,
            principal=principal,
        )

    def fork(
        self,
        origin: Origin,
        *,
        body: dict[str, Any] | None = None,
        request_id: str | None = None,
    ) -> RequestContext:
        """A new request derived from this one (a shadow copy, an evaluation case).

        It acts for the same principal under the same catalog, starts its own clock and goes
        through the whole pipeline again from the raw body (``body`` replaces it). Nothing the
        stages filled in is carried over: a fork is routed, cached and charged on its own.
        """
        if not origin.internal:
            raise ValueError("a fork is internal: only /v1 makes caller requests")
        return RequestContext(
            request_id=request_id or f"{self.request_id}-{origin.value}",
            endpoint=self.endpoint,
            raw_body=orjson.dumps(body) if body is not None else self.raw_body,
            authorization=None,
            catalog=self.catalog,
            origin=origin,
            parent_id=self.request_id,
            principal=self.principal,
            user=self.user,
            session_id=self.session_id,
            trace_id=self.trace_id,
            data_class_header=self.data_class or self.data_class_header,
        )

    def on_meter(self, meter: Finisher) -> None:
        """Phase 1 of ``finish``: ``meter`` makes ``ctx.usage``/``ctx.cost`` final (or defers that)."""
        self.meters.append(meter)

    def on_usage(self, listener: Finisher) -> None:
        """Phase 2 of ``finish``: ``listener`` runs once usage and cost are final, after every
        meter and any work they deferred, whatever order the stages registered in."""
        self.usage_listeners.append(listener)

    def on_finish(self, finisher: Finisher) -> None:
        """Phase 3: run ``finisher`` once the reply is fully delivered or abandoned (innermost first)."""
        self.finishers.append(finisher)

    def finish(self) -> None:
        """Called exactly once by the server when the answer is done, failed or cancelled."""
        if self.finished:
            return
        self.finished = True
        self._run(self.meters)
        if self.deferred:
            # Usage is still being counted: the usage-known phase waits for it.
            pending, self.deferred = self.deferred, []
            self.deferred.append(_then(self, pending, lambda: self._run(self.usage_listeners)))
        else:
            self._run(self.usage_listeners)
        self._run(reversed(self.finishers))
        # Nothing took the deferred work (no record stage in this pipeline): do it now.
        for work in self.take_deferred():
            try:
                work.now()
            except Exception:
                log.exception("deferred finisher work failed", extra={"request_id": self.request_id})

    def _run(self, callbacks: Iterable[Finisher]) -> None:
        for callback in callbacks:
            try:
                callback(self)
            except Exception:
                # A broken callback (a metric, a ledger hand-off) must not hide the others.
                log.exception("finisher failed", extra={"request_id": self.request_id})

    def defer(self, wait: Callable[[], Awaitable[None]], now: Callable[[], None]) -> None:
        """Work the request's recording must wait for (see :class:`Deferred`).

        Called from a finisher, or from a stage that was cancelled mid-work (the work then
        waits for ``finish``). Finishers that run after a deferring one see the request before
        the work is done; the record stage's, which runs last, waits for it.
        """
        self.deferred.append(Deferred(wait, now))

    def take_deferred(self) -> list[Deferred]:
        """The deferred work, now the caller's to run (exactly once, by ``wait`` or ``now``)."""
        work, self.deferred = self.deferred, []
        return work


def _then(ctx: RequestContext, pending: list[Deferred], after: Callable[[], None]) -> Deferred:
    """One deferred unit: ``pending``'s work, then ``after``, exactly once whichever way it runs."""

    def now() -> None:
        try:
            _now_all(ctx, pending)
        finally:
            after()

    async def wait() -> None:
        for index, work in enumerate(pending):
            try:
                await work.wait()
            except asyncio.CancelledError:
                # ``work`` finished its own part (Deferred's contract); the rest cannot wait.
                try:
                    _now_all(ctx, pending[index + 1 :])
                finally:
                    after()
                raise
            except Exception:
                log.exception("deferred finisher work failed", extra={"request_id": ctx.request_id})
        after()

    return Deferred(wait, now)


def _now_all(ctx: RequestContext, work: list[Deferred]) -> None:
    for item in work:
        try:
            item.now()
        except Exception:
            log.exception("deferred finisher work failed", extra={"request_id": ctx.request_id})
