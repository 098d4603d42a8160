"""Quality-driven rollback through real gateway processes: a prompt canary that answers with
text its context does not support is rolled back on ``hallucination_rate``; a faithful one is
promoted. (Helpers and the prompt: ``test_scoring_e2e``.)"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from conftest import FakeHandle
from test_scoring_e2e import FAITHFUL, INVENTED, Traffic, apply, push, rollout, start, status, wait_until

from gateway.testing.langfuse_receiver import LangfuseReceiver
from support.gateway_proc import ADMIN_KEY
from support.ledger import new_key


@pytest.fixture
def receiver() -> Iterator[LangfuseReceiver]:
    with LangfuseReceiver() as running:
        yield running


@pytest.mark.slow
@pytest.mark.parametrize("canary", ["invented", "faithful"])
def test_a_hallucinating_canary_is_rolled_back_and_a_faithful_one_promoted(
    tmp_path: Path, fake_upstream: FakeHandle, receiver: LangfuseReceiver, canary: str
) -> None:
    proc = start(tmp_path, fake_upstream.url, receiver)
    try:
        push(proc, FAITHFUL, "v1")
        push(proc, INVENTED if canary == "invented" else FAITHFUL, "v2")
        proc.cli("prompts", "label", "set", "answer", "beta", "1")
        _, key = new_key(proc.url, ADMIN_KEY, "alpha")
        apply(
            proc, "rollouts.yaml", rollout({"metric": "hallucination_rate", "max_over_stable": 0.2, "min_samples": 3})
        )
        final = "aborted" if canary == "invented" else "promoted"
        with Traffic(proc, key) as traffic:
            try:
                wait_until(lambda: status(proc, "answer-v2").get("status") == final, timeout=30)
            except AssertionError:
                raise AssertionError(json.dumps(status(proc, "answer-v2"), indent=1)[-3000:]) from None
        metrics = httpx.get(f"{proc.url}/metrics").text
    finally:
        proc.stop()

    entries = json.loads(proc.cli("audit", "list", "--target", "rollout:answer-v2", "--format", "json").stdout)
    last = entries[-1]
    checks = [c for e in entries for c in e["after"].get("detail", {}).get("analysis", {}).get("checks", [])]
    assert checks and {c["metric"] for c in checks} == {"hallucination_rate"}
    canary_traces = {trace for variant, trace, _ in traffic.seen if variant == "canary"}
    stable_traces = {trace for variant, trace, _ in traffic.seen if variant == "stable"}
    scores = {s["traceId"]: s for s in receiver.scores("hallucination")}
    assert canary_traces & set(scores) and stable_traces & set(scores)
    assert all(scores[t]["value"] == 0.0 for t in stable_traces & set(scores))
    assert 'gateway_hallucination_score_count{prompt="answer",variant="canary",version="2"}' in metrics
    if canary == "invented":
        assert last["action"] == "rollout.abort" and last["reason"] == "automatic rollback: failed: hallucination_rate"
        analysis = last["after"]["detail"]["analysis"]
        [failed] = analysis["checks"]
        assert failed["ok"] is False and failed["canary"] == 1.0 and failed["stable"] == 0.0
        assert failed["bound"] == pytest.approx(0.2)
        assert analysis["variants"]["canary"]["scored"] >= 3 and analysis["variants"]["stable"]["scored"] >= 3
        assert analysis["variants"]["canary"]["hallucination_rate"] == 1.0
        # The canary's traces hold its hallucination scores, with the reasons, and the rollback.
        bad = [scores[t] for t in canary_traces & set(scores)]
        assert all(s["value"] == 1.0 and s["metadata"]["variant"] == "canary" for s in bad)
        assert "Bitcoin" in bad[0]["comment"] and bad[0]["metadata"]["prompt_version"] == 2
        wait_until(lambda: bool(receiver.scores("rollout_rolled_back")), timeout=5)
        marks = receiver.scores("rollout_rolled_back")
        assert {m["traceId"] for m in marks} <= canary_traces
        assert "hallucination_rate: canary 1" in marks[0]["comment"]
    else:
        assert last["action"] == "rollout.promote"
        assert all(c["ok"] for c in checks if c["canary"] is not None)
        assert all(scores[t]["value"] == 0.0 for t in canary_traces & set(scores))
