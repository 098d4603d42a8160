"""Scores of Langfuse's own evaluators as a rollout signal, through a real gateway process: the
local Langfuse receiver holds evaluator scores for each trace (bad for the canary's, good for
stable's), the gateway pulls them back by trace id, and a rollout gated on ``langfuse.NAME``
is rolled back. (Helpers and the prompt: ``test_scoring_e2e``.)"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from conftest import FakeHandle
from test_scoring_e2e import FAITHFUL, Traffic, apply, push, rollout, start, status, wait_until

from gateway.testing.langfuse_receiver import LangfuseReceiver
from support.gateway_proc import ADMIN_KEY
from support.ledger import new_key

METRIC = "correctness_error"


@pytest.fixture
def receiver() -> Iterator[LangfuseReceiver]:
    with LangfuseReceiver() as running:
        yield running


def test_a_canary_that_langfuse_evaluators_score_badly_is_rolled_back(
    tmp_path: Path, fake_upstream: FakeHandle, receiver: LangfuseReceiver
) -> None:
    pull = {"interval_s": 0.2, "delay_s": 0, "retry_s": 0.2, "lookback_s": 300}
    proc = start(tmp_path, fake_upstream.url, receiver, enabled=False, langfuse_pull=pull)
    try:
        push(proc, FAITHFUL, "v1")
        push(proc, FAITHFUL, "v2 terse")
        proc.cli("prompts", "label", "set", "answer", "beta", "1")
        _, key = new_key(proc.url, ADMIN_KEY, "alpha")
        apply(
            proc, "rollouts.yaml", rollout({"metric": f"langfuse.{METRIC}", "max_over_stable": 0.3, "min_samples": 3})
        )

        def evaluate(client: httpx.Client, response: httpx.Response) -> None:
            # What Langfuse's evaluator would conclude on the trace, minutes later in real life.
            trace = response.headers["x-gateway-trace-id"]
            bad = response.headers.get("x-gateway-variant") == "canary"
            receiver.add_score(trace, METRIC, 1.0 if bad else 0.0)
            receiver.add_score(trace, "category", "rude" if bad else "polite", data_type="CATEGORICAL")

        with Traffic(proc, key, evaluate) as traffic:
            try:
                wait_until(lambda: status(proc, "answer-v2").get("status") == "aborted", timeout=30)
            except AssertionError:
                raise AssertionError(f"traffic: {traffic.error or 'running'}\n"
                                     + json.dumps(status(proc, "answer-v2"), indent=1)[-3000:]) from None
        metrics = httpx.get(f"{proc.url}/metrics").text
    finally:
        proc.stop()

    entries = json.loads(proc.cli("audit", "list", "--target", "rollout:answer-v2", "--format", "json").stdout)
    assert entries[-1]["reason"] == f"automatic rollback: failed: langfuse.{METRIC}"
    analysis = entries[-1]["after"]["detail"]["analysis"]
    [failed] = analysis["checks"]
    assert (failed["canary"], failed["stable"], failed["ok"]) == (1.0, 0.0, False)
    assert analysis["variants"]["canary"][f"langfuse.{METRIC}"]["count"] >= 3
    assert analysis["variants"]["stable"][f"langfuse.{METRIC}"]["mean"] == 0.0
    # Asked by trace id, with the project's keys, only for the rollout's traces.
    traces = {trace for _, trace, _ in traffic.seen}
    asked = {read["traceId"] for read in receiver.score_reads()}
    assert asked and asked <= traces
    pulled = re.search(r"^gateway_langfuse_pulled_scores_total ([0-9.e+]+)$", metrics, re.M)
    assert pulled is not None and float(pulled.group(1)) >= 6
    assert re.search(r'^gateway_langfuse_pull_skipped_total\{reason="not_numeric"\} [1-9]', metrics, re.M)
