"""Tracing policies through a real gateway: a team's redaction policy (nothing personal reaches
any byte the receivers got), sampling per team and alias (errors always traced), an OTLP
endpoint beside Langfuse, and budget-rejected and cancelled requests traced."""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from conftest import FakeHandle, make_gateway
from openai import OpenAI

from gateway.testing.langfuse_receiver import TRACES_PATH, LangfuseReceiver
from support.gateway_proc import ADMIN_KEY, PROVIDER_KEY, GatewayProcess, default_models
from support.ledger import new_key
from support.tracing import one_span

EMAIL, PHONE, CARD = "ana.lopez@example.com", "+1 (415) 555-0134", "4111 1111 1111 1111"
IBAN = "DE89 3704 0044 0532 0130 00"
PII_FORMS = [EMAIL, PHONE, "4155550134", CARD, "4111111111111111", IBAN, "DE89370400440532013000"]

TEAMS: dict[str, Any] = {
    "teams": {
        "plain": {"models": ["*"], "prompts": ["*"]},
        "masked": {"models": ["*"], "tracing": {"content": "mask"}},
        "sampled": {"models": ["*"], "tracing": {"sample_rate": 0.0, "aliases": {"fake-*": {"sample_rate": 1.0}}}},
        "broke": {"models": ["*"], "budget": {"limit_usd": 0.0000001, "period": "daily", "hard": True}},
    }
}


def _models(upstream: str) -> dict[str, Any]:
    models = default_models(upstream)
    models["aliases"]["slow-mock"] = {
        "deployments": [
            {
                "provider": "mock",
                "model": "mock-slow",
                "free": True,
                "mock": {"latency_ms": 40, "stream_chunks": 200},
            }
        ]
    }
    return models


@pytest.fixture(scope="module")
def langfuse() -> Iterator[LangfuseReceiver]:
    with LangfuseReceiver() as running:
        yield running


@pytest.fixture(scope="module")
def collector() -> Iterator[LangfuseReceiver]:
    """A second receiver standing in for any OTLP collector (reached through otlp_endpoint + headers)."""
    with LangfuseReceiver(public_key="collector", secret_key="collector-secret-value") as running:
        yield running


@pytest.fixture(scope="module")
def gateway(
    tmp_path_factory: pytest.TempPathFactory,
    fake_upstream: FakeHandle,
    langfuse: LangfuseReceiver,
    collector: LangfuseReceiver,
) -> Iterator[GatewayProcess]:
    root = tmp_path_factory.mktemp("traced-policies")
    token = base64.b64encode(f"{collector.public_key}:{collector.secret_key}".encode()).decode()
    tracing = {
        "host": langfuse.url,
        "public_key": langfuse.public_key,
        "secret_key": "${TEST_LANGFUSE_SECRET}",
        "environment": "test",
        "flush_interval_ms": 20,
        "timeout_s": 0.5,
        "shutdown_timeout_s": 1.0,
        "otlp_endpoint": collector.url + TRACES_PATH,
        "otlp_headers": {"Authorization": "Basic ${TEST_COLLECTOR_TOKEN}"},
    }
    proc = make_gateway(
        root,
        fake_upstream.url,
        f"sqlite:///{root / 'gateway.db'}",
        teams=TEAMS,
        models=_models(fake_upstream.url),
        extra={"tracing": tracing},
    )
    proc.env["TEST_LANGFUSE_SECRET"] = langfuse.secret_key
    proc.env["TEST_COLLECTOR_TOKEN"] = token
    proc.start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def keys(gateway: GatewayProcess) -> dict[str, str]:
    return {team: new_key(gateway.url, ADMIN_KEY, team)[1] for team in TEAMS["teams"]}


def _client(proc: GatewayProcess, key: str) -> OpenAI:
    return OpenAI(base_url=f"{proc.url}/v1", api_key=key, max_retries=0, timeout=20)


def _post(proc: GatewayProcess, key: str, body: dict[str, Any], **headers: str) -> httpx.Response:
    return httpx.post(
        f"{proc.url}/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}", **headers}, timeout=20
    )


def test_a_masking_teams_personal_data_and_every_key_are_absent_from_every_byte_sent(
    gateway: GatewayProcess, keys: dict[str, str], langfuse: LangfuseReceiver, collector: LangfuseReceiver
) -> None:
    key = keys["masked"]
    said = (
        f"I am {EMAIL}, call me on {PHONE}. Card {CARD}, IBAN {IBAN}. "
        f"My gateway key is {key} and the provider's is {PROVIDER_KEY}."
    )
    messages = [{"role": "system", "content": f"Reply to {EMAIL}."}, {"role": "user", "content": said}]
    client = _client(gateway, key)
    traces = []
    plain = client.chat.completions.with_raw_response.create(
        model="fake-chat",
        messages=messages,
        user=EMAIL,
        extra_headers={"x-session-id": PHONE},  # type: ignore[arg-type]
    )
    traces.append(plain.headers["x-gateway-trace-id"])
    with client.chat.completions.with_streaming_response.create(
        model="mock",
        messages=messages,
        stream=True,  # type: ignore[arg-type]
    ) as streamed:
        assert "".join(c.choices[0].delta.content or "" for c in streamed.parse() if c.choices)
        traces.append(streamed.headers["x-gateway-trace-id"])
    failed = _post(gateway, key, {"model": "dead-chat", "messages": messages})
    assert failed.status_code >= 500
    traces.append(failed.headers["x-gateway-trace-id"])
    refused = _post(gateway, key, {"model": "fake-chat", "messages": messages, "temperature": f"{EMAIL} {CARD}"})
    assert refused.status_code == 400
    traces.append(refused.headers["x-gateway-trace-id"])
    embedded = client.embeddings.with_raw_response.create(model="fake-embed", input=said)
    traces.append(embedded.headers["x-gateway-trace-id"])

    for receiver in (langfuse, collector):  # both destinations got every trace
        spans = [one_span(receiver, trace_id) for trace_id in traces]
        first = spans[0]
        assert first.attributes["langfuse.observation.metadata.content_policy"] == "mask"
        sent_input = first.json("langfuse.observation.input")
        assert "[email]" in sent_input[1]["content"] and "[phone]" in sent_input[1]["content"]
        assert "[card]" in sent_input[1]["content"] and "[iban]" in sent_input[1]["content"]
        assert first.attributes["user.id"].startswith("[email#")
        assert "langfuse.observation.output" in first.attributes  # masked, not dropped
    time.sleep(0.2)
    sent = b"".join(langfuse.raw() + collector.raw())  # decompressed, as they arrived
    assert sent
    for form in PII_FORMS:
        assert form.encode() not in sent, form
    for secret in (key, PROVIDER_KEY, ADMIN_KEY, langfuse.secret_key, collector.secret_key):
        assert secret.encode() not in sent, "an API key was exported"
    assert collector.authorizations() and set(collector.authorizations()) == {
        "Basic " + base64.b64encode(f"{collector.public_key}:{collector.secret_key}".encode()).decode()
    }


def test_sampling_per_team_and_alias_keeps_every_error(
    gateway: GatewayProcess, keys: dict[str, str], langfuse: LangfuseReceiver
) -> None:
    key = keys["sampled"]
    messages = [{"role": "user", "content": "hi"}]
    unsampled = [_post(gateway, key, {"model": "mock", "messages": messages}) for _ in range(5)]
    assert all(response.status_code == 200 for response in unsampled)
    sampled = _post(gateway, key, {"model": "fake-chat", "messages": messages})  # alias override: 100 %
    failed = _post(gateway, key, {"model": "dead-chat", "messages": messages})  # rate 0, but an error
    assert failed.status_code >= 500
    one_span(langfuse, sampled.headers["x-gateway-trace-id"])
    one_span(langfuse, failed.headers["x-gateway-trace-id"])
    time.sleep(0.3)
    seen = {span.trace_id for span in langfuse.spans()}
    assert not seen & {response.headers["x-gateway-trace-id"] for response in unsampled}


def test_a_budget_rejected_request_is_traced(
    gateway: GatewayProcess, keys: dict[str, str], langfuse: LangfuseReceiver
) -> None:
    rejected = _post(gateway, keys["broke"], {"model": "mock", "messages": [{"role": "user", "content": "hi"}]})
    assert rejected.status_code == 429 and rejected.json()["error"]["code"] == "budget_exceeded"
    span = one_span(langfuse, rejected.headers["x-gateway-trace-id"])
    a = span.attributes
    assert span.status_code == 2 and a["langfuse.observation.level"] == "ERROR"
    assert a["error.type"] == "budget_exceeded" and a["langfuse.observation.metadata.budget_status"] == "rejected"
    assert a["langfuse.observation.metadata.team"] == "broke" and a["langfuse.observation.metadata.status"] == 429


def test_a_cancelled_stream_is_traced(
    gateway: GatewayProcess, keys: dict[str, str], langfuse: LangfuseReceiver
) -> None:
    body = {"model": "slow-mock", "stream": True, "messages": [{"role": "user", "content": "a long answer"}]}
    with httpx.stream(
        "POST",
        f"{gateway.url}/v1/chat/completions",
        json=body,
        timeout=20,
        headers={"Authorization": f"Bearer {keys['plain']}"},
    ) as response:
        trace_id = response.headers["x-gateway-trace-id"]
        next(response.iter_bytes())  # the first event, then the caller leaves
    span = one_span(langfuse, trace_id)
    a = span.attributes
    assert a["langfuse.observation.metadata.status"] == 499 and a["langfuse.observation.level"] == "WARNING"
    assert a["error.type"] == "cancelled" and span.status_code == 2
    assert "langfuse.observation.completion_start_time" in a  # it had started answering


def test_a_callers_traceparent_is_joined(
    gateway: GatewayProcess, keys: dict[str, str], langfuse: LangfuseReceiver
) -> None:
    parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    joined = _post(
        gateway, keys["plain"], {"model": "mock", "messages": [{"role": "user", "content": "hi"}]}, traceparent=parent
    )
    assert joined.headers["x-gateway-trace-id"] == "4bf92f3577b34da6a3ce929d0e0e4736"
    span = one_span(langfuse, "4bf92f3577b34da6a3ce929d0e0e4736")
    assert span.parent_span_id == "00f067aa0ba902b7" and span.span_id != "00f067aa0ba902b7"
    bad = _post(
        gateway,
        keys["plain"],
        {"model": "mock", "messages": [{"role": "user", "content": "hi"}]},
        traceparent="00-00000000000000000000000000000000-00f067aa0ba902b7-01",
    )
    fresh = one_span(langfuse, bad.headers["x-gateway-trace-id"])
    assert fresh.trace_id != "0" * 32 and fresh.parent_span_id == ""
