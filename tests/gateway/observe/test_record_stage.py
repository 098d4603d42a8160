"""The record stage in process, with a real ``Metrics`` read back from its Prometheus registry:
what is counted per outcome, when the sinks are called (once, after every inner finisher), that
a failing sink hides nothing, and the deferred-work paths (wait, over the cap, no loop, drain,
cancelled)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import pytest

from gateway.auth import Principal
from gateway.catalog import Catalog, build_catalog
from gateway.config.policies import ModelsFile, PolicyBundle, TeamsFile
from gateway.context import Endpoint, JsonReply, Reply, RequestContext, Usage
from gateway.errors import (
    AuthenticationFailed,
    GatewayError,
    InvalidRequest,
    NotFound,
    PermissionDenied,
    RateLimited,
    UpstreamRejected,
    UpstreamTimeout,
)
from gateway.observe import Metrics, Record
from gateway.pipeline import build_pipeline
from gateway.pipeline_types import Handler

CATALOG: Catalog = build_catalog(
    PolicyBundle(
        models=ModelsFile.model_validate(
            {"aliases": {"chat-small": {"deployments": [{"provider": "mock", "model": "m", "free": True}]}}}
        ),
        teams=TeamsFile.model_validate({"teams": {"alpha": {}}}),
    )
)
ALIAS = CATALOG.aliases["chat-small"]
OK = JsonReply(status=200, body=b"{}")


def context(request_id: str = "req-1", team: str | None = "alpha") -> RequestContext:
    ctx = RequestContext(
        request_id=request_id, endpoint=Endpoint.CHAT, raw_body=b"{}", authorization=None, catalog=CATALOG
    )
    if team is not None:
        ctx.principal = Principal(key_id="key_1", team=team, roles=frozenset({"app"}))
    return ctx


def sample(metrics: Metrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def requests(metrics: Metrics, team: str, model: str, status: str) -> float | None:
    return sample(metrics, "gateway_requests_total", team=team, model=model, status=status)


def in_flight(metrics: Metrics) -> float | None:
    return sample(metrics, "gateway_in_flight_requests")


class Sink:
    def __init__(self, log: list[str] | None = None, name: str = "sink") -> None:
        self.seen: list[RequestContext] = []
        self.costs: list[float] = []
        self._log = log
        self._name = name

    def record(self, ctx: RequestContext) -> None:
        self.seen.append(ctx)
        self.costs.append(ctx.cost)
        if self._log is not None:
            self._log.append(self._name)


class BrokenSink:
    def __init__(self) -> None:
        self.calls = 0

    def record(self, ctx: RequestContext) -> None:
        self.calls += 1
        raise RuntimeError("the ledger queue is gone")


def answer(*, usage: Usage | None = None, cost: float = 0.0, overhead: float = 0.0) -> Handler:
    """The rest of the pipeline: resolves the alias, sets usage and cost, answers."""

    async def handler(ctx: RequestContext) -> Reply:
        ctx.alias = ALIAS
        ctx.usage = usage
        ctx.cost = cost
        ctx.overhead_seconds = overhead
        return OK

    return handler


def failing(error: Exception, *, resolved: bool = False) -> Handler:
    async def handler(ctx: RequestContext) -> Reply:
        if resolved:
            ctx.alias = ALIAS
        raise error

    return handler


class Deferrer:
    """Work a meter or a finisher leaves for the record to wait for, with counters for each way it ran."""

    def __init__(self, usage: Usage | None = None, cost: float = 0.0) -> None:
        self.release = asyncio.Event()
        self.waited = 0
        self.done_now = 0
        self.cancelled = 0
        self._usage = usage
        self._cost = cost

    def _count(self, ctx: RequestContext) -> None:
        ctx.usage = self._usage
        ctx.cost = self._cost

    def defer(self, ctx: RequestContext) -> None:
        async def wait() -> None:
            self.waited += 1
            try:
                await self.release.wait()
            except asyncio.CancelledError:
                self.cancelled += 1
                now()  # Deferred's contract: a cancelled wait still leaves the work done
                raise
            self._count(ctx)

        def now() -> None:
            self.done_now += 1
            self._count(ctx)

        ctx.defer(wait, now)


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


# -- what is counted ------------------------------------------------------------------------


async def test_a_success_is_counted_with_its_tokens_cost_and_latency() -> None:
    metrics = Metrics()
    sink = Sink()
    seen_in_flight: list[float | None] = []
    inner = answer(usage=Usage(prompt_tokens=10, completion_tokens=5), cost=0.25, overhead=0.0003)

    async def terminal(ctx: RequestContext) -> Reply:
        seen_in_flight.append(in_flight(metrics))
        return await inner(ctx)

    ctx = context()
    reply = await Record(metrics, [sink])(ctx, terminal)
    assert reply is OK
    assert seen_in_flight == [1.0]
    # Nothing is recorded until the answer is done (a stream outlives the pipeline call).
    assert in_flight(metrics) == 1.0
    assert requests(metrics, "alpha", "chat-small", "200") is None
    assert sink.seen == []
    assert ctx.elapsed_seconds is None

    before = time.perf_counter()
    ctx.finish()
    after = time.perf_counter()

    assert in_flight(metrics) == 0.0
    assert requests(metrics, "alpha", "chat-small", "200") == 1.0
    assert sample(metrics, "gateway_tokens_total", team="alpha", model="chat-small", direction="input") == 10.0
    assert sample(metrics, "gateway_tokens_total", team="alpha", model="chat-small", direction="output") == 5.0
    assert sample(metrics, "gateway_cost_usd_total", team="alpha", model="chat-small") == 0.25
    assert ctx.elapsed_seconds is not None
    assert before - ctx.started <= ctx.elapsed_seconds <= after - ctx.started
    assert sample(metrics, "gateway_request_duration_seconds_count", model="chat-small") == 1.0
    assert sample(metrics, "gateway_request_duration_seconds_sum", model="chat-small") == ctx.elapsed_seconds
    assert sample(metrics, "gateway_overhead_seconds_count", endpoint="chat") == 1.0
    assert sample(metrics, "gateway_overhead_seconds_sum", endpoint="chat") == 0.0003
    assert sink.seen == [ctx]


async def test_without_usage_or_cost_no_token_or_cost_series_is_touched() -> None:
    metrics = Metrics()
    ctx = context()
    await Record(metrics, [])(ctx, answer())
    ctx.finish()
    assert requests(metrics, "alpha", "chat-small", "200") == 1.0
    assert sample(metrics, "gateway_tokens_total", team="alpha", model="chat-small", direction="input") is None
    assert sample(metrics, "gateway_cost_usd_total", team="alpha", model="chat-small") is None


async def test_an_embeddings_request_counts_its_overhead_under_its_endpoint() -> None:
    metrics = Metrics()
    ctx = context()
    ctx.endpoint = Endpoint.EMBEDDINGS
    await Record(metrics, [])(ctx, answer(overhead=0.002))
    ctx.finish()
    assert sample(metrics, "gateway_overhead_seconds_count", endpoint="embeddings") == 1.0
    assert sample(metrics, "gateway_overhead_seconds_sum", endpoint="embeddings") == 0.002
    assert sample(metrics, "gateway_overhead_seconds_count", endpoint="chat") is None


@pytest.mark.parametrize(
    ("make_error", "team", "resolved", "status"),
    [
        (lambda: AuthenticationFailed("Invalid or revoked API key."), None, False, "401"),
        (lambda: NotFound("The model 'x' does not exist.", param="model"), "alpha", False, "404"),
        (lambda: PermissionDenied("Team 'alpha' may not use the model 'x'."), "alpha", False, "403"),
        (lambda: InvalidRequest("'n' must be...", param="n", code="invalid_value"), "alpha", False, "400"),
        (lambda: InvalidRequest("wrong", code="wrong_endpoint"), "alpha", False, "400"),
        (lambda: RateLimited("Budget exceeded.", code="budget_exceeded"), "alpha", True, "429"),
        (lambda: UpstreamTimeout("The upstream timed out."), "alpha", True, "504"),
        # A failing upstream is a bad gateway: 503 from the upstream is counted as the 502 sent.
        (lambda: UpstreamRejected("The upstream failed.", status=503), "alpha", True, "502"),
        (lambda: UpstreamRejected("Rate limited upstream.", status=429), "alpha", True, "429"),
    ],
)
async def test_an_error_is_recorded_on_the_context_counted_by_status_and_raised(
    make_error: Callable[[], GatewayError], team: str | None, resolved: bool, status: str
) -> None:
    metrics = Metrics()
    sink = Sink()
    error = make_error()
    ctx = context(team=team)
    with pytest.raises(GatewayError) as caught:
        await Record(metrics, [sink])(ctx, failing(error, resolved=resolved))
    assert caught.value is error, "the same error, re-raised"
    assert ctx.status == int(status)
    assert ctx.error is error
    assert in_flight(metrics) == 1.0
    assert sink.seen == []

    ctx.finish()
    label_team = team if team is not None else "anonymous"
    model = "chat-small" if resolved else "unknown"
    assert requests(metrics, label_team, model, status) == 1.0
    assert requests(metrics, label_team, model, "200") is None
    assert in_flight(metrics) == 0.0
    assert sink.seen == [ctx]
    assert sample(metrics, "gateway_request_duration_seconds_count", model=model) == 1.0


async def test_a_bug_is_re_raised_as_is_and_left_for_the_server_to_turn_into_a_500() -> None:
    metrics = Metrics()
    ctx = context()
    bug = KeyError("oops")
    with pytest.raises(KeyError) as caught:
        await Record(metrics, [])(ctx, failing(bug))
    assert caught.value is bug
    assert ctx.status == 200
    assert ctx.error is None
    assert in_flight(metrics) == 1.0
    ctx.status = 500  # what the server does before finishing
    ctx.finish()
    assert requests(metrics, "alpha", "unknown", "500") == 1.0
    assert in_flight(metrics) == 0.0


async def test_counts_accumulate_per_team_model_and_status() -> None:
    metrics = Metrics()
    record = Record(metrics, [])
    for index in range(3):
        ctx = context(f"ok-{index}")
        await record(ctx, answer(usage=Usage(1, 2), cost=0.5))
        ctx.finish()
    for index, team in enumerate(["alpha", "beta"]):
        ctx = context(f"limited-{index}", team=team)
        with pytest.raises(RateLimited):
            await record(ctx, failing(RateLimited("no"), resolved=True))
        ctx.finish()
    assert requests(metrics, "alpha", "chat-small", "200") == 3.0
    assert requests(metrics, "alpha", "chat-small", "429") == 1.0
    assert requests(metrics, "beta", "chat-small", "429") == 1.0
    assert requests(metrics, "beta", "chat-small", "200") is None
    assert sample(metrics, "gateway_tokens_total", team="alpha", model="chat-small", direction="input") == 3.0
    assert sample(metrics, "gateway_tokens_total", team="alpha", model="chat-small", direction="output") == 6.0
    assert sample(metrics, "gateway_cost_usd_total", team="alpha", model="chat-small") == 1.5
    assert sample(metrics, "gateway_request_duration_seconds_count", model="chat-small") == 5.0
    assert in_flight(metrics) == 0.0


# -- sinks ----------------------------------------------------------------------------------


class PricingStage:
    """An inner stage whose finisher makes the cost final, as the upstream call's meter does."""

    def __init__(self, cost: float, order: list[str]) -> None:
        self._cost = cost
        self._order = order

    async def __call__(self, ctx: RequestContext, call_next: Handler) -> Reply:
        def priced(ctx: RequestContext) -> None:
            ctx.cost = self._cost
            self._order.append("inner finisher")

        ctx.on_finish(priced)
        return await call_next(ctx)


async def test_sinks_are_called_once_after_the_inner_finishers() -> None:
    metrics = Metrics()
    order: list[str] = []
    sink = Sink(order)
    handler = build_pipeline([Record(metrics, [sink]), PricingStage(1.5, order)], answer())
    ctx = context()
    assert await handler(ctx) is OK
    assert sink.seen == []
    ctx.finish()
    ctx.finish()  # the server calls it once; a second call changes nothing
    assert order == ["inner finisher", "sink"]
    assert sink.seen == [ctx]
    assert sink.costs == [1.5]
    assert sample(metrics, "gateway_cost_usd_total", team="alpha", model="chat-small") == 1.5
    assert requests(metrics, "alpha", "chat-small", "200") == 1.0


async def test_a_failing_sink_does_not_hide_the_others(caplog: pytest.LogCaptureFixture) -> None:
    metrics = Metrics()
    order: list[str] = []
    first, broken, last, added = Sink(order, "first"), BrokenSink(), Sink(order, "last"), Sink(order, "added")
    record = Record(metrics, [first, broken, last])
    record.add_sink(added)
    ctx = context()
    await record(ctx, answer())
    with caplog.at_level(logging.ERROR, logger="gateway.record"):
        ctx.finish()
    assert order == ["first", "last", "added"]
    assert broken.calls == 1
    assert (first.seen, last.seen, added.seen) == ([ctx], [ctx], [ctx])
    assert requests(metrics, "alpha", "chat-small", "200") == 1.0
    failures = [r for r in caplog.records if r.name == "gateway.record"]
    assert [r.getMessage() for r in failures] == ["request sink failed"]
    assert failures[0].exc_info is not None
    assert str(failures[0].exc_info[1]) == "the ledger queue is gone"


# -- deferred work --------------------------------------------------------------------------


class CountingStage:
    """An inner stage whose meter cannot count yet: it defers the count, as a stream without
    reported usage does while its tokenizer is being built; a usage listener settles after it."""

    def __init__(self, deferrer: Deferrer, order: list[str]) -> None:
        self._deferrer = deferrer
        self._order = order

    async def __call__(self, ctx: RequestContext, call_next: Handler) -> Reply:
        ctx.on_meter(self._deferrer.defer)
        ctx.on_usage(lambda c: self._order.append(f"settled {c.cost}"))
        return await call_next(ctx)


class DeferringFinisherStage:
    """An inner stage whose finisher defers work directly (not through a meter)."""

    def __init__(self, *deferrers: Deferrer) -> None:
        self._deferrers = deferrers

    async def __call__(self, ctx: RequestContext, call_next: Handler) -> Reply:
        def finisher(ctx: RequestContext) -> None:
            for deferrer in self._deferrers:
                deferrer.defer(ctx)

        ctx.on_finish(finisher)
        return await call_next(ctx)


async def test_deferred_work_is_awaited_before_the_request_is_recorded() -> None:
    metrics = Metrics()
    order: list[str] = []
    sink = Sink(order)
    deferrer = Deferrer(usage=Usage(7, 3), cost=0.5)
    record = Record(metrics, [sink])
    ctx = context()
    await build_pipeline([record, CountingStage(deferrer, order)], answer())(ctx)

    ctx.finish()
    finished_at = time.perf_counter()
    await settle()
    assert record.waiting == 1
    assert deferrer.waited == 1
    assert sink.seen == []
    assert order == []
    assert requests(metrics, "alpha", "chat-small", "200") is None
    assert in_flight(metrics) == 0.0, "the request is over; only its recording waits"

    await asyncio.sleep(0.02)  # time the deferred work takes is not the request's latency
    deferrer.release.set()
    await asyncio.wait_for(record.drain(), 2)
    assert record.waiting == 0
    assert order == ["settled 0.5", "sink"], "usage listeners run after the count, the sink after them"
    assert sink.seen == [ctx]
    assert (deferrer.waited, deferrer.done_now, deferrer.cancelled) == (1, 0, 0)
    assert requests(metrics, "alpha", "chat-small", "200") == 1.0
    assert sample(metrics, "gateway_tokens_total", team="alpha", model="chat-small", direction="input") == 7.0
    assert sample(metrics, "gateway_tokens_total", team="alpha", model="chat-small", direction="output") == 3.0
    assert sample(metrics, "gateway_cost_usd_total", team="alpha", model="chat-small") == 0.5
    assert ctx.elapsed_seconds is not None
    assert ctx.elapsed_seconds <= finished_at - ctx.started


async def test_deferred_work_that_fails_is_logged_and_the_request_still_recorded(
    caplog: pytest.LogCaptureFixture,
) -> None:
    metrics = Metrics()
    sink = Sink()
    record = Record(metrics, [sink])
    ctx = context()

    async def wait() -> None:
        raise ValueError("tokenizer broke")

    def now() -> None:
        raise AssertionError("not to be called: the wait ran")

    class Failing:
        async def __call__(self, ctx: RequestContext, call_next: Handler) -> Reply:
            ctx.on_finish(lambda c: c.defer(wait, now))
            return await call_next(ctx)

    await build_pipeline([record, Failing()], answer())(ctx)
    with caplog.at_level(logging.ERROR, logger="gateway.record"):
        ctx.finish()
        await asyncio.wait_for(record.drain(), 2)
    assert sink.seen == [ctx]
    assert requests(metrics, "alpha", "chat-small", "200") == 1.0
    assert [r.getMessage() for r in caplog.records if r.name == "gateway.record"] == [
        "deferred finisher work failed"
    ]


async def test_past_max_waiting_the_work_is_done_synchronously(caplog: pytest.LogCaptureFixture) -> None:
    metrics = Metrics()
    sink = Sink()
    record = Record(metrics, [sink], max_waiting=1)
    first, second, third = Deferrer(cost=1.0), Deferrer(cost=2.0), Deferrer(cost=4.0)
    contexts = [context("req-1"), context("req-2"), context("req-3")]
    for ctx, deferrer in zip(contexts, (first, second, third), strict=True):
        await build_pipeline([record, DeferringFinisherStage(deferrer)], answer())(ctx)

    with caplog.at_level(logging.WARNING, logger="gateway.record"):
        contexts[0].finish()
        assert record.waiting == 1
        assert sink.seen == []

        contexts[1].finish()  # over the cap: done now, recorded now
        assert (second.waited, second.done_now) == (0, 1)
        assert sink.seen == [contexts[1]]
        assert sink.costs == [2.0]
        assert record.waiting == 1

        contexts[2].finish()
        assert (third.waited, third.done_now) == (0, 1)
        assert sink.seen == [contexts[1], contexts[2]]

    warnings = [r for r in caplog.records if r.name == "gateway.record"]
    assert [r.getMessage() for r in warnings] == [
        "too many requests wait on deferred work; doing it synchronously"
    ], "logged once per ten seconds, not once per request"
    assert requests(metrics, "alpha", "chat-small", "200") == 2.0

    first.release.set()
    await asyncio.wait_for(record.drain(), 2)
    assert (first.waited, first.done_now) == (1, 0)
    assert sink.seen == [contexts[1], contexts[2], contexts[0]]
    assert sink.costs == [2.0, 4.0, 1.0]
    assert requests(metrics, "alpha", "chat-small", "200") == 3.0
    assert sample(metrics, "gateway_cost_usd_total", team="alpha", model="chat-small") == 7.0


async def test_with_max_waiting_zero_nothing_waits() -> None:
    metrics = Metrics()
    sink = Sink()
    record = Record(metrics, [sink], max_waiting=0)
    deferrer = Deferrer(usage=Usage(2, 1))
    ctx = context()
    await build_pipeline([record, DeferringFinisherStage(deferrer)], answer())(ctx)
    ctx.finish()
    assert record.waiting == 0
    assert (deferrer.waited, deferrer.done_now) == (0, 1)
    assert sink.seen == [ctx]
    assert sample(metrics, "gateway_tokens_total", team="alpha", model="chat-small", direction="input") == 2.0


async def test_finished_outside_an_event_loop_the_work_is_done_synchronously(
    caplog: pytest.LogCaptureFixture,
) -> None:
    metrics = Metrics()
    sink = Sink()
    record = Record(metrics, [sink])
    deferrer = Deferrer(cost=0.125)
    ctx = context()
    await build_pipeline([record, DeferringFinisherStage(deferrer)], answer())(ctx)
    with caplog.at_level(logging.WARNING, logger="gateway.record"):
        await asyncio.to_thread(ctx.finish)  # a thread has no running loop, like a CLI tool
    assert record.waiting == 0
    assert (deferrer.waited, deferrer.done_now) == (0, 1)
    assert sink.costs == [0.125]
    assert requests(metrics, "alpha", "chat-small", "200") == 1.0
    assert [r for r in caplog.records if r.name == "gateway.record"] == [], "not an overload: nothing to warn of"


# -- drain ----------------------------------------------------------------------------------


async def test_drain_with_nothing_waiting_returns_at_once() -> None:
    record = Record(Metrics(), [])
    assert record.waiting == 0
    await asyncio.wait_for(record.drain(), 0.5)


async def test_drain_waits_for_every_waiting_request_including_ones_added_meanwhile() -> None:
    metrics = Metrics()
    sink = Sink()
    record = Record(metrics, [sink])
    first, second = Deferrer(cost=1.0), Deferrer(cost=2.0)
    ctx1, ctx2 = context("req-1"), context("req-2")
    await build_pipeline([record, DeferringFinisherStage(first)], answer())(ctx1)
    await build_pipeline([record, DeferringFinisherStage(second)], answer())(ctx2)

    ctx1.finish()
    draining = asyncio.ensure_future(record.drain())
    await settle()
    assert not draining.done()
    ctx2.finish()  # starts waiting while the drain is under way
    assert record.waiting == 2

    first.release.set()
    await settle()
    assert sink.seen == [ctx1]
    assert record.waiting == 1
    assert not draining.done(), "the request added during the drain is waited for too"

    second.release.set()
    await asyncio.wait_for(draining, 2)
    assert record.waiting == 0
    assert sink.seen == [ctx1, ctx2]
    assert requests(metrics, "alpha", "chat-small", "200") == 2.0


async def test_a_cancelled_wait_does_the_rest_synchronously_and_still_records() -> None:
    metrics = Metrics()
    sink = Sink()
    record = Record(metrics, [sink])
    first, second = Deferrer(cost=1.0), Deferrer(cost=3.0)
    ctx = context("req-cancelled")
    await build_pipeline([record, DeferringFinisherStage(first, second)], answer())(ctx)
    ctx.finish()
    await settle()
    assert first.waited == 1
    assert record.waiting == 1

    (task,) = [t for t in asyncio.all_tasks() if t.get_name() == "record-req-cancelled"]
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert task.cancelled()
    assert (first.waited, first.done_now, first.cancelled) == (1, 1, 1)
    assert (second.waited, second.done_now) == (0, 1), "the rest done synchronously, never waited"
    assert sink.seen == [ctx]
    assert sink.costs == [3.0]
    assert record.waiting == 0
    assert requests(metrics, "alpha", "chat-small", "200") == 1.0
