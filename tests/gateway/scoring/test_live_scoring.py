"""Live scoring in process: which finished requests are queued (sampling, rollouts, context),
the bounded queue, evaluator failures and budgets, what each score becomes, and the worker
process runner."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram

from gateway.answer import Answer
from gateway.auth import Principal
from gateway.catalog import Catalog, build_catalog
from gateway.config.policies import ModelsFile, PolicyBundle, ScoringPolicy, TeamsFile
from gateway.context import Endpoint, Origin, RequestContext
from gateway.scoring.evaluator import Judgement
from gateway.scoring.groundedness import GroundednessEvaluator
from gateway.scoring.langfuse import LangfuseScore
from gateway.scoring.live import LiveMetrics, LiveScorer, case_of, question_of
from gateway.scoring.runners import ProcessRunner, ThreadRunner
from gateway.scoring.store import ScoredAnswer

CONTEXT = "Refunds are available within 30 days of purchase."
GOOD = "Refunds are available within 30 days of purchase."
BAD = "Refunds take 90 days and are paid in Bitcoin."


def catalog(scoring: dict[str, Any] | None = None) -> Catalog:
    return build_catalog(
        PolicyBundle(
            models=ModelsFile.model_validate(
                {
                    "aliases": {
                        "chat": {"deployments": [{"provider": "mock", "model": "m", "free": True}]},
                        "other": {"deployments": [{"provider": "mock", "model": "m", "free": True}]},
                    }
                }
            ),
            teams=TeamsFile.model_validate({"teams": {"alpha": {}}}),
            scoring=ScoringPolicy.model_validate(scoring or {"aliases": {"chat": 1.0}}),
        )
    )


CATALOG = catalog()


def finished(
    answer: str = GOOD,
    *,
    context: Any = CONTEXT,
    alias: str = "chat",
    request_id: str = "r1",
    status: int = 200,
    origin: Origin = Origin.CALLER,
    rollout: str | None = None,
    cat: Catalog = CATALOG,
) -> RequestContext:
    ctx = RequestContext(
        request_id=request_id, endpoint=Endpoint.CHAT, raw_body=b"{}", authorization=None, catalog=cat, origin=origin
    )
    ctx.principal = Principal(key_id="key_1", team="alpha", roles=frozenset({"app"}))
    ctx.alias = cat.aliases[alias]
    ctx.body = {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "How long do refunds take?"},
        ]
    }
    ctx.scoring_context = context
    ctx.status = status
    ctx.trace_id = "ab" * 16
    if rollout is not None:
        ctx.rollout_id, ctx.variant = rollout, "canary"
    data = {"choices": [{"index": 0, "message": {"role": "assistant", "content": answer}}]}
    ctx.answer = Answer.of_json(200, orjson.dumps(data), data)
    return ctx


@dataclass
class Collect:
    items: list[Any] = field(default_factory=list)

    def submit(self, item: Any) -> None:
        self.items.append(item)


def live_metrics() -> tuple[LiveMetrics, CollectorRegistry]:
    registry = CollectorRegistry()
    return LiveMetrics(
        scored=Histogram("h", "", ("prompt", "version", "variant"), registry=registry),
        skipped=Counter("skipped", "", ("reason",), registry=registry),
        dropped=Counter("dropped", "", ("reason",), registry=registry),
    ), registry


def scorer(
    evaluator: Any = None,
    *,
    queue_size: int = 100,
    timeout_s: float = 1.0,
    writer: Collect | None = None,
    sender: Collect | None = None,
) -> tuple[LiveScorer, CollectorRegistry]:
    metrics, registry = live_metrics()
    live = LiveScorer(
        ThreadRunner(evaluator or GroundednessEvaluator()),
        metrics,
        queue_size=queue_size,
        batch_size=8,
        timeout_s=timeout_s,
        writer=writer,
        sender=sender,
    )  # type: ignore[arg-type]
    return live, registry


def count(registry: CollectorRegistry, name: str, reason: str) -> float:
    return registry.get_sample_value(f"{name}_total", {"reason": reason}) or 0.0


def test_only_sampled_answered_caller_requests_with_a_context_are_queued() -> None:
    live, registry = scorer()
    live.record(finished())
    assert live.queued == 1
    live.record(finished(status=502))
    live.record(finished(origin=Origin.EVAL))
    live.record(finished(alias="other"))  # policy: sample_rate 0 outside `chat`
    cut = finished(rollout="ro")
    assert cut.answer is not None
    cut.answer.complete = False  # a stream that never reached [DONE]
    live.record(cut)
    assert live.queued == 1
    # A rollout's requests are always taken, whatever policy says.
    live.record(finished(alias="other", rollout="ro"))
    assert live.queued == 2
    # Sampled but without a context: counted, not queued.
    live.record(finished(context=None))
    assert live.queued == 2 and count(registry, "skipped", "no_context") == 1


def test_sample_rates_by_prompt_then_alias_then_default() -> None:
    policy = ScoringPolicy.model_validate(
        {"sample_rate": 0.1, "prompts": {"support-*": 0.5, "support-x": 1.0}, "aliases": {"chat": 0.25}}
    )
    assert policy.rate("support-x", "chat") == 1.0
    assert policy.rate("support-y", "chat") == 0.5
    assert policy.rate("other", "chat") == 0.25
    assert policy.rate(None, "embed") == 0.1
    with pytest.raises(ValueError, match="between 0 and 1"):
        ScoringPolicy.model_validate({"aliases": {"chat": 2}})
    live, _ = scorer(queue_size=1000)
    half = catalog({"aliases": {"chat": 0.5}})
    for i in range(400):
        live.record(finished(cat=half, request_id=f"r{i}"))
    assert 140 <= live.queued <= 260


def test_a_full_queue_drops_and_counts() -> None:
    live, registry = scorer(queue_size=3)
    for i in range(5):
        live.record(finished(request_id=f"r{i}"))
    assert live.queued == 3 and count(registry, "dropped", "queue_full") == 2


async def test_scores_go_to_the_store_langfuse_and_the_histogram() -> None:
    writer, sender = Collect(), Collect()
    live, registry = scorer(writer=writer, sender=sender)
    good, bad = finished(GOOD, request_id="good"), finished(BAD, request_id="bad", rollout="ro")
    bad.prompt_name, bad.prompt_version = "answer", 2
    live.record(good)
    live.record(bad)
    assert await live.score_batch() == 2
    stored: dict[str, ScoredAnswer] = {s.request_id: s for s in writer.items}
    assert stored["good"].score == 0.0 and not stored["good"].hallucinated
    assert stored["bad"].hallucinated and stored["bad"].unsupported == 1 and stored["bad"].claims == 1
    assert (stored["bad"].variant, stored["bad"].rollout_id, stored["bad"].prompt_version) == ("canary", "ro", 2)
    assert "Bitcoin" in stored["bad"].reasons[0]
    row = stored["bad"].row()
    assert row["hallucinated"] is True and orjson.loads(row["reasons"]) == list(stored["bad"].reasons)
    scores: list[LangfuseScore] = sender.items
    assert [(s.name, s.trace_id) for s in scores] == [("hallucination", "ab" * 16)] * 2
    body = next(s for s in scores if s.value == 1.0).body("test")
    assert body["traceId"] == "ab" * 16 and body["dataType"] == "NUMERIC" and body["environment"] == "test"
    assert body["metadata"]["variant"] == "canary" and body["comment"].startswith("hallucinated: 1 of 1")
    assert registry.get_sample_value("h_count", {"prompt": "answer", "version": "2", "variant": "canary"}) == 1
    assert registry.get_sample_value("h_sum", {"prompt": "", "version": "", "variant": ""}) == 0.0


class Raises:
    name = "raises"

    def score(self, context: str, question: str, answer: str) -> Judgement:
        if "boom" in answer:
            raise RuntimeError("evaluator bug")
        return Judgement(0.0, evaluator=self.name)


class Slow:
    name = "slow"

    def score(self, context: str, question: str, answer: str) -> Judgement:
        deadline = time.process_time() + 0.2
        while time.process_time() < deadline:  # CPU, as a real evaluator spends it
            pass
        return Judgement(0.0, evaluator=self.name)


async def test_an_evaluator_that_fails_or_overruns_costs_scores_not_requests() -> None:
    writer = Collect()
    live, registry = scorer(Raises(), writer=writer)
    live.record(finished("boom", request_id="a"))
    live.record(finished("fine", request_id="b"))
    assert await live.score_batch() == 1
    assert [s.request_id for s in writer.items] == ["b"]
    assert count(registry, "dropped", "evaluator_error") == 1

    slow, registry = scorer(Slow(), timeout_s=0.05)
    slow.record(finished())
    assert await slow.score_batch() == 0
    assert count(registry, "dropped", "timeout") == 1


async def test_the_worker_task_scores_in_the_background_and_close_drains() -> None:
    writer = Collect()
    live, _ = scorer(writer=writer)
    live.start()
    live.record(finished(request_id="a"))
    for _ in range(100):
        if writer.items:
            break
        await asyncio.sleep(0.02)
    assert [s.request_id for s in writer.items] == ["a"]
    live.record(finished(request_id="b"))
    await live.close(time.monotonic() + 5)
    assert [s.request_id for s in writer.items] == ["a", "b"] and live.queued == 0


def test_the_case_is_context_question_and_answer() -> None:
    ctx = finished(context=[{"title": "Refunds", "text": CONTEXT}, "Shipping is free."])
    assert case_of(ctx) == (f"Refunds: {CONTEXT}\n\nShipping is free.", "How long do refunds take?", GOOD)
    assert case_of(finished(context=[])) is None
    assert (
        question_of([{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}])
        == "a b"
    )
    assert question_of("nonsense") == ""


async def test_the_process_runner_scores_in_a_spawned_worker() -> None:
    runner = ProcessRunner("groundedness")
    try:
        outcomes = await runner.run([(CONTEXT, "q", GOOD), (CONTEXT, "q", BAD)], 2.0)
    finally:
        runner.close()
    assert [o.failure for o in outcomes] == [None, None]
    assert outcomes[0].score == 0.0 and outcomes[1].score == 1.0 and outcomes[1].unsupported == 1


def test_the_worker_exits_when_its_gateway_is_killed() -> None:
    import os
    import signal
    import subprocess
    import sys

    script = (
        "import asyncio, sys, time\n"
        "from gateway.scoring.runners import ProcessRunner\n"
        "runner = ProcessRunner('groundedness')\n"
        "asyncio.run(runner.run([('a', 'b', 'c')], 5.0))\n"
        "print(*runner._pool._processes, flush=True)\n"
        "time.sleep(60)\n"
    )
    gateway = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert gateway.stdout is not None
        [worker] = [int(pid) for pid in gateway.stdout.readline().split()]
        assert os.path.exists(f"/proc/{worker}")
        gateway.send_signal(signal.SIGKILL)
        gateway.wait(10)
        for _ in range(100):  # it checks once a second
            if not os.path.exists(f"/proc/{worker}"):
                break
            time.sleep(0.05)
        assert not os.path.exists(f"/proc/{worker}"), "the worker outlived its gateway"
    finally:
        if gateway.poll() is None:
            gateway.kill()


async def test_a_hanging_or_failing_evaluator_costs_its_scores_and_the_worker_is_replaced(tmp_path: Path) -> None:
    """A local NLI model (the operator's code) that spins forever has its worker killed at the
    batch's budget; one that raises costs that answer's score; the next batch gets a new worker."""
    (tmp_path / "adapter.py").write_text(
        "def load(model_dir):\n"
        "    def entailment(premise, hypothesis):\n"
        "        if 'spins' in hypothesis:\n"
        "            while True:\n"
        "                pass\n"
        "        if 'raises' in hypothesis:\n"
        "            raise RuntimeError('model bug')\n"
        "        return 0.9\n"
        "    return entailment\n"
    )
    runner = ProcessRunner("nli", str(tmp_path), slack_s=2.0)
    try:
        [hung] = await runner.run([(CONTEXT, "q", "The refund window spins around for ever.")], 0.2)
        assert hung.failure == "timeout"
        raised, fine = await runner.run(
            [(CONTEXT, "q", "The refund window raises many questions."), (CONTEXT, "q", GOOD)], 1.0
        )
        assert raised.failure == "evaluator_error"
        assert fine.failure is None and fine.score == 0.0
    finally:
        runner.close()
