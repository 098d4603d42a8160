"""A render's CPU-time bound (``gateway.prompts.render``): the clock is read lazily, never looser."""

from __future__ import annotations

import time

import pytest

from gateway.prompts.limits import RenderLimits
from gateway.prompts.render import RenderError, RenderTimeout, _Budget, compile_prompt


def _spin(seconds: float) -> None:
    until = time.thread_time() + seconds
    while time.thread_time() < until:
        pass


def test_cpu_spent_before_the_first_check_counts() -> None:
    budget = _Budget(RenderLimits(timeout_s=0.02))
    _spin(0.03)  # past the bound before the clock was first read
    with pytest.raises(RenderTimeout):
        budget.check_time()


def test_a_render_within_its_bound_passes_every_check() -> None:
    budget = _Budget(RenderLimits(timeout_s=5.0))
    for _ in range(3):
        budget.check_time()


def test_a_simple_render_reads_no_cpu_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    reads: list[int] = []
    real = time.thread_time
    monkeypatch.setattr(time, "thread_time", lambda: reads.append(1) or real())
    compiled = compile_prompt([("user", "Write about {{ topic }} ({{ n }}).")])
    assert compiled.render({"topic": "proxies", "n": 3}) == [{"role": "user", "content": "Write about proxies (3)."}]
    assert reads == []


def test_a_runaway_loop_still_times_out() -> None:
    nested = "{% for i in range(n) %}{% for j in range(n) %}{{ i * j }}{% endfor %}{% endfor %}"
    compiled = compile_prompt([("user", nested)])
    with pytest.raises(RenderError) as raised:
        compiled.render({"n": 90_000}, RenderLimits(timeout_s=0.05, max_loop_steps=10**12, max_output_chars=10**12))
    assert raised.value.timed_out
