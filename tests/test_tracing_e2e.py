"""Tracing through the real server: one Langfuse generation per request, sent off the request
path to a local receiver, and a Langfuse that is down, failing or hanging never fails a request."""

from __future__ import annotations

import asyncio
import re
import shutil
import signal
import time
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import FakeHandle
from openai import NotFoundError, OpenAI

from gateway.pricing import to_nanos
from gateway.storage.schema import ledger
from gateway.testing.langfuse_receiver import LangfuseReceiver
from support.gateway_proc import ADMIN_KEY, PROVIDER_KEY, GatewayProcess
from support.ledger import new_key, wait_for_rows
from support.tracing import one_span, traced_gateway

MESSAGES = [{"role": "user", "content": "Say something about traces."}]
TRACE_ID = re.compile(r"^[0-9a-f]{32}$")


def _traced_gateway(root: Path, upstream: str, receiver: LangfuseReceiver, **tracing: Any) -> GatewayProcess:
    return traced_gateway(root, upstream, receiver, mirror_interval_s=0.2, **tracing)


@pytest.fixture(scope="module")
def traced(
    tmp_path_factory: pytest.TempPathFactory, fake_upstream: FakeHandle, receiver: LangfuseReceiver
) -> Iterator[GatewayProcess]:
    proc = _traced_gateway(tmp_path_factory.mktemp("traced"), fake_upstream.url, receiver, queue_size=8,
                           batch_size=4).start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def key(traced: GatewayProcess) -> tuple[str, str]:
    return new_key(traced.url, ADMIN_KEY, "alpha")


@pytest.fixture(autouse=True)
def _normal(receiver: LangfuseReceiver) -> Iterator[None]:
    receiver.set_mode("normal")
    yield
    receiver.set_mode("normal")


def _client(proc: GatewayProcess, key: str) -> OpenAI:
    return OpenAI(base_url=f"{proc.url}/v1", api_key=key, max_retries=0, timeout=20)


def _metric(proc: GatewayProcess, name: str, **labels: str) -> float:
    text = httpx.get(f"{proc.url}/metrics").text
    wanted = name + ("{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}" if labels else "")
    for line in text.splitlines():
        if line.startswith(wanted + " "):
            return float(line.split()[-1])
    return 0.0


async def test_a_request_is_one_generation_with_its_fields_and_the_ledgers_cost(
    traced: GatewayProcess, key: tuple[str, str], receiver: LangfuseReceiver, fake: FakeHandle
) -> None:
    key_id, secret = key
    request_id = "trace-" + uuid.uuid4().hex
    raw = _client(traced, secret).chat.completions.with_raw_response.create(
        model="fake-chat", messages=MESSAGES, user="ana",  # type: ignore[arg-type]
        extra_headers={"x-request-id": request_id, "x-session-id": "session-7"},
    )
    answer = raw.parse()
    trace_id = raw.headers["x-gateway-trace-id"]
    assert TRACE_ID.match(trace_id)

    span = one_span(receiver, trace_id)
    a = span.attributes
    assert a["langfuse.observation.type"] == "generation"
    assert (a["user.id"], a["session.id"], a["langfuse.environment"]) == ("ana", "session-7", "test")
    assert a["langfuse.trace.name"] == "fake-chat"
    assert a["langfuse.observation.model.name"] == "gpt-4o-mini"
    assert a["gen_ai.request.model"] == "fake-chat" and a["gen_ai.response.model"] == "gpt-4o-mini"
    assert span.json("langfuse.observation.input") == MESSAGES
    assert span.json("langfuse.observation.output") == {
        "role": "assistant", "content": answer.choices[0].message.content
    }
    assert answer.usage is not None
    assert span.json("langfuse.observation.usage_details") == {
        "input": answer.usage.prompt_tokens, "output": answer.usage.completion_tokens,
        "total": answer.usage.total_tokens,
    }
    assert (a["gen_ai.usage.input_tokens"], a["gen_ai.usage.output_tokens"]) == (
        answer.usage.prompt_tokens, answer.usage.completion_tokens
    )
    meta = span.metadata
    assert meta["request_id"] == request_id
    assert (meta["team"], meta["key_id"], meta["alias"]) == ("alpha", key_id, "fake-chat")
    assert meta["deployment"] == "openai/gpt-4o-mini"
    assert (meta["status"], meta["fallback"], meta["origin"]) == (200, False, "caller")
    assert span.status_code == 0 and "langfuse.observation.level" not in a
    assert 0 < span.end_ns - span.start_ns < 10e9
    assert span.resource["service.name"] == "llm-gateway"

    [row] = await wait_for_rows(traced.config.database_url, ledger.c.request_id == request_id, until=bool)
    cost = span.json("langfuse.observation.cost_details")["total"]
    assert to_nanos(cost) == row["cost_nanos"] > 0
    assert row["trace_id"] == trace_id  # finance, logs and traces join
    # The access log is written by a background thread: its line may lag the answer.
    for _ in range(100):
        if f'"trace_id":"{trace_id}"' in traced.log():
            break
        await asyncio.sleep(0.05)
    assert f'"trace_id":"{trace_id}"' in traced.log()


def test_streams_embeddings_and_fallbacks_are_traced(
    traced: GatewayProcess, key: tuple[str, str], receiver: LangfuseReceiver, fake: FakeHandle
) -> None:
    client = _client(traced, key[1])
    with client.chat.completions.with_streaming_response.create(
        model="fake-chat", messages=MESSAGES, stream=True,  # type: ignore[arg-type]
    ) as response:
        text = "".join(
            chunk.choices[0].delta.content or "" for chunk in response.parse() if chunk.choices
        )
        streamed = response.headers["x-gateway-trace-id"]
    span = one_span(receiver, streamed)
    assert span.json("langfuse.observation.output") == {"role": "assistant", "content": text}
    assert span.attributes["langfuse.observation.metadata.stream"] is True
    assert span.attributes["gen_ai.response.finish_reasons"] == ["stop"]
    # Time to first token: when the first event went out, between the span's start and end.
    first = datetime.fromisoformat(span.json("langfuse.observation.completion_start_time"))
    assert span.start_ns <= first.timestamp() * 1e9 <= span.end_ns + 1_000

    embedded = client.embeddings.with_raw_response.create(model="fake-embed", input="a trace")
    span = one_span(receiver, embedded.headers["x-gateway-trace-id"])
    assert span.json("langfuse.observation.input") == "a trace"
    assert "langfuse.observation.output" not in span.attributes
    assert span.attributes["gen_ai.operation.name"] == "embeddings"

    fallback = client.chat.completions.with_raw_response.create(model="fallback-chat", messages=MESSAGES)  # type: ignore[arg-type]
    span = one_span(receiver, fallback.headers["x-gateway-trace-id"])
    assert span.attributes["langfuse.observation.metadata.fallback"] is True
    assert span.attributes["langfuse.observation.model.name"] == "gpt-4o"


def test_failed_and_rejected_requests_are_traced_as_errors(
    traced: GatewayProcess, key: tuple[str, str], receiver: LangfuseReceiver
) -> None:
    dead = httpx.post(f"{traced.url}/v1/chat/completions", json={"model": "dead-chat", "messages": MESSAGES},
                      headers={"Authorization": f"Bearer {key[1]}"}, timeout=20)
    assert dead.status_code >= 500
    span = one_span(receiver, dead.headers["x-gateway-trace-id"])
    assert span.status_code == 2 and span.attributes["langfuse.observation.level"] == "ERROR"
    assert span.attributes["langfuse.observation.metadata.status"] == dead.status_code
    assert span.attributes["langfuse.observation.status_message"] == span.status_message != ""

    refused = httpx.post(f"{traced.url}/v1/chat/completions", json={"model": "fake-chat", "messages": MESSAGES},
                         headers={"Authorization": "Bearer gw-not-a-key-at-all-0000"})
    assert refused.status_code == 401
    span = one_span(receiver, refused.headers["x-gateway-trace-id"])
    assert span.attributes["langfuse.observation.metadata.team"] == "anonymous"
    assert span.attributes["error.type"] == refused.json()["error"]["code"]


def test_no_key_is_ever_exported(traced: GatewayProcess, key: tuple[str, str], receiver: LangfuseReceiver) -> None:
    _client(traced, key[1]).chat.completions.with_raw_response.create(model="fake-chat", messages=MESSAGES)  # type: ignore[arg-type]
    httpx.post(f"{traced.url}/v1/chat/completions", json={"model": "dead-chat", "messages": MESSAGES},
               headers={"Authorization": f"Bearer {key[1]}"}, timeout=20)
    time.sleep(0.3)
    sent = b"".join(receiver.raw())
    assert sent
    for secret in (key[1], PROVIDER_KEY, ADMIN_KEY, receiver.secret_key):
        assert secret.encode() not in sent


@pytest.mark.parametrize("mode", ["error", "hang", "stopped"])
def test_a_failing_langfuse_fails_no_request_and_the_loss_is_counted(
    traced: GatewayProcess, key: tuple[str, str], receiver: LangfuseReceiver, mode: str
) -> None:
    before = sum(_metric(traced, "gateway_trace_spans_dropped_total", destination="langfuse", reason=r)
                 for r in ("queue_full", "export_failed"))
    receiver.set_mode(mode)  # type: ignore[arg-type]
    client = _client(traced, key[1])
    started = time.monotonic()
    for _ in range(20):
        assert client.chat.completions.create(model="mock", messages=MESSAGES).choices  # type: ignore[arg-type]
    assert time.monotonic() - started < 5.0  # nothing waited on the receiver's 0.5 s timeout
    deadline = time.monotonic() + 5
    dropped = 0.0
    while time.monotonic() < deadline:
        dropped = sum(_metric(traced, "gateway_trace_spans_dropped_total", destination="langfuse", reason=r)
                      for r in ("queue_full", "export_failed")) - before
        if dropped >= 12:  # at most the queue (8) and one batch in flight (4) may still be pending
            break
        time.sleep(0.05)
    assert dropped >= 12
    receiver.set_mode("normal")
    fresh = client.chat.completions.with_raw_response.create(model="mock", messages=MESSAGES)  # type: ignore[arg-type]
    one_span(receiver, fresh.headers["x-gateway-trace-id"])  # back to normal once Langfuse is


def test_a_graceful_stop_with_a_hanging_langfuse_ends_within_its_bound(
    tmp_path: Path, fake_upstream: FakeHandle, receiver: LangfuseReceiver
) -> None:
    proc = _traced_gateway(tmp_path, fake_upstream.url, receiver, timeout_s=30, shutdown_timeout_s=1.0).start()
    try:
        secret = new_key(proc.url, ADMIN_KEY, "alpha")[1]
        receiver.set_mode("hang")
        for _ in range(5):
            _client(proc, secret).chat.completions.create(model="mock", messages=MESSAGES)  # type: ignore[arg-type]
        time.sleep(0.1)
        started = time.monotonic()
        proc.stop(signal.SIGTERM)
        assert time.monotonic() - started < 6.0
        log = proc.log()
        assert "gateway stopped cleanly" in log and "traces not sent at shutdown" in log
    finally:
        proc.stop(signal.SIGKILL)


def _push(proc: GatewayProcess, name: str = "summarise") -> None:
    from support.gateway_proc import REPO

    for file in (f"{name}.yaml", f"{name}.golden.jsonl"):
        shutil.copy(REPO / "prompts" / file, proc.config.root / "prompts" / file)
    pushed = proc.cli("prompts", "push", f"prompts/{name}.yaml", "-m", "Summariser", check=False)
    assert pushed.returncode == 0, pushed.stdout + pushed.stderr


def _until(check: object, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def _ask_prompt(client: OpenAI, text: str) -> Any:
    """A prompt request, retried until this replica's label sync saw the CLI's push."""
    deadline = time.monotonic() + 10
    while True:
        try:
            return client.chat.completions.with_raw_response.create(
                model="prompt:summarise@latest", messages=[], extra_body={"variables": {"text": text}},
            )
        except NotFoundError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def test_a_prompts_generation_names_its_mirrored_version(
    traced: GatewayProcess, key: tuple[str, str], receiver: LangfuseReceiver
) -> None:
    _push(traced)
    _until(lambda: receiver.prompts("summarise"))  # mirrored in the background
    [mirrored] = receiver.prompts("summarise")
    assert mirrored["type"] == "chat" and mirrored["prompt"][0]["role"] in ("system", "user")
    assert mirrored["config"]["gateway_version"] == 1 and mirrored["commitMessage"].startswith("gateway v1")
    client = _client(traced, key[1])
    raw = _ask_prompt(client, "Traces join.")
    span = one_span(receiver, raw.headers["x-gateway-trace-id"])
    assert span.attributes["langfuse.observation.prompt.name"] == "summarise" == raw.headers["x-prompt-name"]
    assert span.attributes["langfuse.observation.prompt.version"] == int(raw.headers["x-prompt-version"]) \
        == mirrored["version"]
    assert span.attributes["langfuse.trace.name"] == "summarise"
    assert "Traces join." in span.json("langfuse.observation.input")[-1]["content"]  # as rendered and sent

    # A label move is mirrored too.
    moved = traced.cli("prompts", "label", "set", "summarise", "staging", "1", check=False)
    assert moved.returncode == 0, moved.stdout + moved.stderr
    _until(lambda: "staging" in receiver.prompts("summarise")[0]["labels"])
    patches = [call for call in receiver.calls() if call.method == "PATCH"]
    assert patches[-1].path == f"/api/public/v2/prompts/summarise/versions/{mirrored['version']}"
    assert patches[-1].body == {"newLabels": ["staging"]}


def test_a_langfuse_outage_never_blocks_a_push_and_the_mirror_catches_up(
    tmp_path: Path, fake_upstream: FakeHandle
) -> None:
    with LangfuseReceiver() as langfuse:
        # Langfuse already holds a version of this prompt (made elsewhere): the numbers differ,
        # and the generation must name Langfuse's, the metadata the gateway's.
        langfuse.set_mode("normal")
        httpx.post(f"{langfuse.url}/api/public/v2/prompts", json={"name": "summarise", "type": "text", "prompt": "x"},
                   auth=(langfuse.public_key, langfuse.secret_key)).raise_for_status()
        proc = _traced_gateway(tmp_path, fake_upstream.url, langfuse).start()
        try:
            langfuse.set_mode("hang")
            started = time.monotonic()
            _push(proc)
            assert time.monotonic() - started < 15  # the CLI's own start-up; nothing waited on Langfuse
            secret = new_key(proc.url, ADMIN_KEY, "alpha")[1]
            time.sleep(0.5)
            assert len(langfuse.prompts("summarise")) == 1  # nothing got through while it hung
            langfuse.set_mode("error")
            time.sleep(0.5)
            langfuse.set_mode("normal")
            _until(lambda: len(langfuse.prompts("summarise")) == 2)
            time.sleep(0.5)  # a retry that already made the version must not make it twice
            assert [v["version"] for v in langfuse.prompts("summarise")] == [1, 2]
            raw = _ask_prompt(_client(proc, secret), "Outage.")
            assert raw.headers["x-prompt-version"] == "1"
            span = one_span(langfuse, raw.headers["x-gateway-trace-id"])
            assert span.attributes["langfuse.observation.prompt.version"] == 2
            assert span.attributes["langfuse.observation.metadata.prompt_version"] == 1
            assert _metric(proc, "gateway_prompt_mirror_total", kind="version", outcome="mirrored") == 1
        finally:
            proc.stop()
