"""``RequestContext.finish`` runs in phases: meters, then usage-known callbacks, then finishers.

The order is the phase's, never the order stages registered in: a budget's settlement
registered before (or after) the upstream's pricing still sees the priced cost. Registration
order once decided it, and completed streams were charged nothing.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from gateway.context import Endpoint, RequestContext, Usage


def new_context() -> RequestContext:
    return RequestContext(
        request_id="r", endpoint=Endpoint.CHAT, raw_body=b"{}", authorization=None, catalog=None,  # type: ignore[arg-type]
    )


def price(ctx: RequestContext) -> None:
    assert ctx.usage is not None
    ctx.cost = ctx.usage.total_tokens * 0.5


@pytest.mark.parametrize("settlement_first", [True, False])
def test_usage_callbacks_see_the_priced_cost_whatever_the_registration_order(settlement_first: bool) -> None:
    ctx = new_context()
    ctx.usage = Usage(3, 5)
    seen: list[tuple[str, float]] = []
    settle = lambda ctx: seen.append(("settle", ctx.cost))  # noqa: E731
    record = lambda ctx: seen.append(("record", ctx.cost))  # noqa: E731
    if settlement_first:
        ctx.on_finish(record)
        ctx.on_usage(settle)
        ctx.on_meter(price)
    else:
        ctx.on_meter(price)
        ctx.on_usage(settle)
        ctx.on_finish(record)
    ctx.finish()
    assert seen == [("settle", 4.0), ("record", 4.0)]


def test_finish_runs_once_and_a_failing_callback_hides_no_other(caplog: pytest.LogCaptureFixture) -> None:
    ctx = new_context()
    calls: list[str] = []

    def broken(ctx: RequestContext) -> None:
        raise RuntimeError("boom")

    ctx.on_meter(broken)
    ctx.on_meter(lambda ctx: calls.append("meter"))
    ctx.on_usage(broken)
    ctx.on_usage(lambda ctx: calls.append("usage"))
    ctx.on_finish(lambda ctx: calls.append("finish"))
    ctx.finish()
    ctx.finish()
    assert calls == ["meter", "usage", "finish"]
    assert sum("finisher failed" in record.message for record in caplog.records) == 2


def deferring_meter(events: list[str]) -> Any:
    """A meter that cannot count yet: it defers, and sets the usage when the work runs."""

    def meter(ctx: RequestContext) -> None:
        async def wait() -> None:
            await asyncio.sleep(0.01)
            now()

        def now() -> None:
            events.append("counted")
            ctx.usage = Usage(1, 1)
            ctx.cost = 7.0

        ctx.defer(wait, now)

    return meter


async def test_usage_callbacks_wait_for_a_deferred_count() -> None:
    ctx = new_context()
    events: list[str] = []
    ctx.on_meter(deferring_meter(events))
    ctx.on_usage(lambda ctx: events.append(f"settled {ctx.cost}"))
    taken: list[Any] = []
    ctx.on_finish(lambda ctx: taken.extend(ctx.take_deferred()))  # what the record stage does
    ctx.finish()
    assert events == [] and len(taken) == 1  # nothing settled before the count
    await taken[0].wait()
    assert events == ["counted", "settled 7.0"]


def test_a_deferred_count_nobody_waits_for_is_done_and_settled_at_finish() -> None:
    ctx = new_context()
    events: list[str] = []
    ctx.on_meter(deferring_meter(events))
    ctx.on_usage(lambda ctx: events.append(f"settled {ctx.cost}"))
    ctx.finish()  # no record stage took the work
    assert events == ["counted", "settled 7.0"]


async def test_a_cancelled_wait_still_counts_and_settles_once() -> None:
    ctx = new_context()
    events: list[str] = []
    gate = asyncio.Event()

    def meter(ctx: RequestContext) -> None:
        async def wait() -> None:
            try:
                await gate.wait()
            except asyncio.CancelledError:
                now()
                raise
            now()

        def now() -> None:
            events.append("counted")

        ctx.defer(wait, now)

    ctx.on_meter(meter)
    ctx.on_meter(deferring_meter(events))
    ctx.on_usage(lambda ctx: events.append("settled"))
    taken: list[Any] = []
    ctx.on_finish(lambda ctx: taken.extend(ctx.take_deferred()))
    ctx.finish()
    task = asyncio.ensure_future(taken[0].wait())
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert events == ["counted", "counted", "settled"]
