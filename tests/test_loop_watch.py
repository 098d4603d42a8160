"""The event loop's lag and the collector's pauses are measured, logged when they hold requests up."""

from __future__ import annotations

import asyncio
import gc
import logging
import time

import pytest
from prometheus_client import CollectorRegistry

from gateway.observe.loop import WARN_LAG_S, LoopWatch


def _buckets(registry: CollectorRegistry, name: str, **labels: str) -> dict[float, float]:
    """Cumulative bucket counts of a histogram, by upper bound."""
    found: dict[float, float] = {}
    for metric in registry.collect():
        for sample in metric.samples:
            if sample.name == f"{name}_bucket" and all(sample.labels.get(k) == v for k, v in labels.items()):
                found[float(sample.labels["le"])] = sample.value
    return found


def _count(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return registry.get_sample_value(f"{name}_count", labels) or 0.0


async def test_a_held_loop_is_measured_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    registry = CollectorRegistry()
    watch = LoopWatch(registry, interval_s=0.02)
    watch.start()
    try:
        await asyncio.sleep(0.1)  # ticks on time
        assert _count(registry, "gateway_event_loop_lag_seconds") >= 2
        assert _buckets(registry, "gateway_event_loop_lag_seconds")[0.1] == _count(
            registry, "gateway_event_loop_lag_seconds")  # none late by 0.1 s yet
        with caplog.at_level(logging.WARNING, logger="gateway.loop"):
            asyncio.get_running_loop().call_soon(time.sleep, 0.3)  # a callback that holds the loop
            await asyncio.sleep(0.35)
    finally:
        await watch.close()
    buckets = _buckets(registry, "gateway_event_loop_lag_seconds")
    assert buckets[float("inf")] - buckets[0.25] >= 1  # the late tick, 0.28 s or so
    warnings = [r for r in caplog.records if r.getMessage() == "the event loop ran late"]
    assert len(warnings) == 1 and warnings[0].late_ms >= 250  # type: ignore[attr-defined]


async def test_collections_are_timed_by_generation_and_named_in_the_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    registry = CollectorRegistry()
    watch = LoopWatch(registry, interval_s=0.02)
    watch.start()
    garbage = [[i] for i in range(300_000)]  # something for a full collection to walk
    try:
        with caplog.at_level(logging.WARNING, logger="gateway.loop"):
            started = time.perf_counter()
            while time.perf_counter() - started < WARN_LAG_S:  # hold the loop at least as long
                gc.collect(2)
            await asyncio.sleep(0.05)
        assert _count(registry, "gateway_gc_pause_seconds", generation="2") >= 1
        warning = next(r for r in caplog.records if r.getMessage() == "the event loop ran late")
        assert warning.longest_gc_ms > 0  # type: ignore[attr-defined]
    finally:
        del garbage
        await watch.close()


async def test_closing_stops_the_timer_and_the_callback() -> None:
    registry = CollectorRegistry()
    watch = LoopWatch(registry, interval_s=0.01)
    watch.start()
    await asyncio.sleep(0.05)
    await watch.close()
    assert watch._on_gc not in gc.callbacks
    ticks = _count(registry, "gateway_event_loop_lag_seconds")
    gc.collect()
    await asyncio.sleep(0.05)
    assert _count(registry, "gateway_event_loop_lag_seconds") == ticks
    assert _count(registry, "gateway_gc_pause_seconds", generation="2") == 0
