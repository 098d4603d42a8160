"""Live hallucination scoring, feedback and quality-driven rollback through real gateway processes.

The mock model echoes the last user message, so a prompt version decides what its answers say:
a version whose message is the context answers from it, one whose message invents facts
answers with text the context does not support.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from conftest import FakeHandle, make_gateway
from sqlalchemy import select

from gateway.storage import open_database
from gateway.storage.schema import hallucination_scores, ledger
from gateway.testing.langfuse_receiver import LangfuseReceiver
from support.gateway_proc import ADMIN_KEY, GatewayProcess, default_models
from support.ledger import ledger_rows, new_key

CONTEXT = [
    {"title": "Refunds", "text": "Refunds are available within 30 days of purchase."},
    {"title": "Shipping", "text": "Shipping is free for orders over 50 dollars."},
]
FAITHFUL = "{{ context[0].text }} {{ context[1].text }}"
INVENTED = "Refunds take 90 days and are paid in Bitcoin by the Zurich office."

PROMPT = """\
name: answer
model: mock
variables:
  type: object
  required: [question, context]
  properties:
    question: {{type: string}}
    context: {{type: array}}
messages:
  - role: system
    content: "Answer {{{{ question }}}} from the passages only ({marker})."
  - role: user
    content: "{user}"
"""

TEAMS: dict[str, dict[str, dict[str, object]]] = {"teams": {"alpha": {}, "beta": {}}}


@pytest.fixture
def receiver() -> Iterator[LangfuseReceiver]:
    with LangfuseReceiver() as running:
        yield running


async def score_rows(database_url: str) -> list[dict[str, Any]]:
    """The stored scores, once there are some (they are written after the scoring flush)."""
    db = await open_database(database_url, run_migrations=False)
    try:
        for _ in range(200):
            async with db.engine.connect() as conn:
                result = await conn.execute(select(hallucination_scores).order_by(hallucination_scores.c.id))
                rows = [dict(row) for row in result.mappings()]
            if rows:
                return rows
            await asyncio.sleep(0.05)
        return []
    finally:
        await db.close()


def start(tmp_path: Path, upstream: str, receiver: LangfuseReceiver, **scoring: Any) -> GatewayProcess:
    tracing = {
        "host": receiver.url,
        "public_key": receiver.public_key,
        "secret_key": receiver.secret_key,
        "flush_interval_ms": 20,
        "timeout_s": 1.0,
    }
    extra = {"ledger": {"flush_interval_ms": 50}, "tracing": tracing, "scoring": {"flush_interval_ms": 50, **scoring}}
    return make_gateway(
        tmp_path,
        upstream,
        f"sqlite:///{tmp_path / 'gateway.db'}",
        models=default_models(upstream),
        teams=TEAMS,
        extra=extra,
    ).start()


def push(proc: GatewayProcess, user: str, marker: str) -> None:
    path = proc.config.root / "answer.yaml"
    path.write_text(PROMPT.format(user=user, marker=marker))
    proc.cli("prompts", "push", str(path), "-m", marker)


def apply(proc: GatewayProcess, name: str, content: dict[str, Any]) -> None:
    (proc.config.root / "policies" / name).write_text(yaml.safe_dump(content))
    proc.cli("policies", "apply", "-m", f"apply {name}")


def wait_until(predicate: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


def status(proc: GatewayProcess, rollout: str) -> dict[str, Any]:
    found: dict[str, Any] = httpx.get(
        f"{proc.url}/admin/rollouts/{rollout}", headers={"Authorization": f"Bearer {ADMIN_KEY}"}
    ).json()
    return found


class Traffic:
    """Callers of the prompt in a thread; ``on_answer`` sees each (response) as it comes."""

    def __init__(self, proc: GatewayProcess, key: str, on_answer: Any = None) -> None:
        self.proc, self.key, self.on_answer = proc, key, on_answer
        self.seen: list[tuple[str | None, str | None, str]] = []  # (variant, trace id, request id)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._error: str | None = None

    def __enter__(self) -> Traffic:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)
        if self.error is not None and exc[0] is None:
            raise AssertionError(f"the traffic thread stopped: {self.error}")

    @property
    def error(self) -> str | None:
        """Why the thread stopped early (an answer that was not 200...), so a test that then
        waits in vain says so instead of timing out with too few samples."""
        return self._error

    def _run(self) -> None:
        try:
            self._send()
        except BaseException as exc:
            self._error = f"{type(exc).__name__}: {exc}"[:2000]

    def _send(self) -> None:
        with httpx.Client(base_url=self.proc.url, timeout=20) as client:
            i = 0
            while not self._stop.is_set():
                response = client.post(
                    "/v1/chat/completions",
                    headers={"Authorization": f"Bearer {self.key}"},
                    json={
                        "model": "prompt:answer@beta",
                        "user": f"user-{i % 300}",
                        "variables": {"question": "How long do refunds take?", "context": CONTEXT},
                    },
                )
                assert response.status_code == 200, response.text
                self.seen.append(
                    (
                        response.headers.get("x-gateway-variant"),
                        response.headers.get("x-gateway-trace-id"),
                        response.headers["x-request-id"],
                    )
                )
                if self.on_answer is not None:
                    self.on_answer(client, response)
                i += 1


def rollout(check: dict[str, Any]) -> dict[str, Any]:
    return {
        "rollouts": {
            "answer-v2": {
                "target": {"prompt": "answer", "label": "beta", "canary": {"version": 2}},
                # Several steps: a window that passes by luck must not promote a bad canary.
                "steps": [{"weight": w} for w in (50, 60, 70, 100)],
                "interval_s": 1,
                "min_requests": 3,
                "failure_limit": 2,
                "checks": [check],
            }
        }
    }


def test_feedback_reaches_langfuse_and_a_thumbs_down_canary_is_rolled_back(
    tmp_path: Path, fake_upstream: FakeHandle, receiver: LangfuseReceiver
) -> None:
    proc = start(tmp_path, fake_upstream.url, receiver, enabled=False)  # feedback needs no scoring
    try:
        push(proc, FAITHFUL, "v1")
        push(proc, FAITHFUL, "v2 terse")
        proc.cli("prompts", "label", "set", "answer", "beta", "1")
        _, key = new_key(proc.url, ADMIN_KEY, "alpha")
        _, other_key = new_key(proc.url, ADMIN_KEY, "alpha")
        _, beta_key = new_key(proc.url, ADMIN_KEY, "beta")

        # Another team's key cannot post feedback on alpha's request: told it does not exist.
        with httpx.Client(base_url=proc.url, timeout=20) as client:
            asked = client.post(
                "/v1/chat/completions",
                headers={"Authorization": f"Bearer {key}", "x-request-id": "alpha-req-1"},
                json={"model": "mock", "messages": [{"role": "user", "content": "hi"}]},
            )
            assert asked.status_code == 200
            vote = {"request_id": "alpha-req-1", "metric": "thumbs_down", "value": 1, "comment": "wrong answer"}
            denied = client.post("/v1/feedback", json=vote, headers={"Authorization": f"Bearer {beta_key}"})
            assert denied.status_code == 404, denied.text
            assert denied.json()["error"]["code"] == "request_not_found"
            assert denied.json()["error"]["type"] == "invalid_request_error"
            assert client.post("/v1/feedback", json=vote).status_code == 401
            bad = client.post("/v1/feedback", json={**vote, "value": "bad"}, headers={"Authorization": f"Bearer {key}"})
            assert bad.status_code == 400 and bad.json()["error"]["param"] == "value"
            # Any key of the team that made the request may post, by request id or by trace id.
            posted = client.post("/v1/feedback", json=vote, headers={"Authorization": f"Bearer {other_key}"})
            assert posted.status_code == 201, posted.text
            assert (
                posted.json()["object"] == "feedback"
                and posted.json()["trace_id"] == asked.headers["x-gateway-trace-id"]
            )
            by_trace = client.post(
                "/v1/feedback",
                headers={"Authorization": f"Bearer {key}"},
                json={"trace_id": asked.headers["x-gateway-trace-id"], "metric": "csat", "value": 4},
            )
            assert by_trace.status_code == 201, by_trace.text
        wait_until(lambda: len(receiver.scores("thumbs_down")) == 1 and len(receiver.scores("csat")) == 1)
        [thumb] = receiver.scores("thumbs_down")
        assert (thumb["traceId"], thumb["value"], thumb["comment"]) == (
            asked.headers["x-gateway-trace-id"],
            1,
            "wrong answer",
        )
        assert not receiver.scores("hallucination")  # scoring is off

        apply(
            proc, "rollouts.yaml", rollout({"metric": "feedback.thumbs_down", "max_over_stable": 0.3, "min_samples": 3})
        )

        def vote_on(client: httpx.Client, response: httpx.Response) -> None:
            # Canary users vote it down; stable's are happy.
            down = 1 if response.headers.get("x-gateway-variant") == "canary" else 0
            posted = client.post(
                "/v1/feedback",
                headers={"Authorization": f"Bearer {key}"},
                json={"request_id": response.headers["x-request-id"], "metric": "thumbs_down", "value": down},
            )
            assert posted.status_code == 201, posted.text

        with Traffic(proc, key, vote_on):
            try:
                wait_until(lambda: status(proc, "answer-v2").get("status") == "aborted", timeout=30)
            except AssertionError:
                raise AssertionError(json.dumps(status(proc, "answer-v2"), indent=1)[-3000:]) from None
    finally:
        proc.stop()

    entries = json.loads(proc.cli("audit", "list", "--target", "rollout:answer-v2", "--format", "json").stdout)
    assert entries[-1]["reason"] == "automatic rollback: failed: feedback.thumbs_down"
    analysis = entries[-1]["after"]["detail"]["analysis"]
    [failed] = analysis["checks"]
    assert (failed["canary"], failed["stable"], failed["ok"]) == (1.0, 0.0, False)
    assert analysis["variants"]["canary"]["feedback.thumbs_down"]["count"] >= 3
    assert len(receiver.scores("thumbs_down")) > 3


def test_sampled_answers_with_a_context_are_scored_and_stored_by_request_id(
    tmp_path: Path, fake_upstream: FakeHandle, receiver: LangfuseReceiver
) -> None:
    """Off a rollout, policy samples by alias; the caller's `scoring_context` is the context and
    never goes upstream; an answer without a context is counted, not scored."""
    proc = start(tmp_path, fake_upstream.url, receiver)
    try:
        apply(proc, "scoring.yaml", {"sample_rate": 0.0, "aliases": {"fake-*": 1.0}})
        _, key = new_key(proc.url, ADMIN_KEY, "alpha")
        headers = {"Authorization": f"Bearer {key}"}
        with httpx.Client(base_url=proc.url, timeout=20) as client:

            def ask(request_id: str, model: str, **extra: Any) -> httpx.Response:
                response = client.post(
                    "/v1/chat/completions",
                    headers={**headers, "x-request-id": request_id},
                    json={"model": model, "messages": [{"role": "user", "content": "Hello"}], **extra},
                )
                assert response.status_code == 200, response.text
                return response

            time.sleep(1.0)  # the applied policy reaches the replica at its next poll
            scored = ask("with-context", "fake-chat", scoring_context=["The sky is green on Mondays."])
            last = fake_upstream.app.last_request
            assert last is not None and "scoring_context" not in last["body"]
            ask("no-context", "fake-chat")
            ask("not-sampled", "mock", scoring_context="Anything.")  # mock's rate is the default, 0
        rows = asyncio.run(score_rows(proc.config.database_url))
        metrics = httpx.get(f"{proc.url}/metrics").text
    finally:
        proc.stop()
    assert [row["request_id"] for row in rows] == ["with-context"]
    [row] = rows
    [entry] = asyncio.run(ledger_rows(proc.config.database_url, ledger.c.request_id == "with-context"))
    assert row["trace_id"] == entry["trace_id"] == scored.headers["x-gateway-trace-id"]
    assert (row["alias"], row["team"], row["evaluator"]) == ("fake-chat", "alpha", "groundedness")
    assert row["score"] > row["threshold"] and row["hallucinated"]  # the fake's answer is not about the sky
    wait_until(lambda: bool(receiver.scores("hallucination")))
    [sent] = receiver.scores("hallucination")
    assert sent["traceId"] == row["trace_id"] and sent["value"] == pytest.approx(row["score"], abs=1e-6)
    assert 'gateway_scoring_skipped_total{reason="no_context"} 1.0' in metrics
    assert 'gateway_hallucination_score_count{prompt="",variant="",version=""} 1.0' in metrics
