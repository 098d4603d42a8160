"""``ThrottledLog``: one line per interval for a flood of events, counting what it held back."""

from __future__ import annotations

import logging

import pytest

from gateway import throttled_log
from gateway.throttled_log import ThrottledLog


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(throttled_log.time, "monotonic", fake)
    return fake


def test_one_line_per_interval_and_the_count_of_what_it_stands_for(
    clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    logger = logging.getLogger("test.throttled")
    throttled = ThrottledLog(logger, every_s=10.0)
    with caplog.at_level(logging.WARNING, logger="test.throttled"):
        throttled.log("queue full: %s", "traces", count=3, endpoint="a")
        for _ in range(5):
            clock.now += 1.0
            throttled.log("queue full: %s", "traces")
        clock.now += 5.0  # 10 s after the first line
        throttled.log("export failed: %s", "HTTP 500", count=2, endpoint="b")
    lines = [(r.levelno, r.getMessage(), r.__dict__["count"], r.__dict__["endpoint"]) for r in caplog.records]
    assert lines == [
        (logging.WARNING, "queue full: traces", 3, "a"),
        # the five held back and this one's two; the line says what happened last
        (logging.WARNING, "export failed: HTTP 500", 7, "b"),
    ]


def test_the_first_event_is_logged_however_early_the_clock(clock: Clock, caplog: pytest.LogCaptureFixture) -> None:
    """A monotonic clock may read less than ``every_s`` just after boot."""
    clock.now = 0.5
    throttled = ThrottledLog(logging.getLogger("test.throttled"), every_s=60.0, level=logging.ERROR)
    with caplog.at_level(logging.ERROR, logger="test.throttled"):
        throttled.log("budget counters unavailable", team="alpha")
    assert [(r.levelno, r.__dict__["team"], r.__dict__["count"]) for r in caplog.records] == [
        (logging.ERROR, "alpha", 1)
    ]
