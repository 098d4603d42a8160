"""An upstream's answer past its deployment's ``max_answer_bytes``: a 502 before the first byte,
the stream's closing error event after it; the ledger keeps the row and the gateway serves on.
The ``mock`` provider, whose answers are built in the gateway's own process, is bounded alike,
and refuses what it would have to build past any bound (a JSON schema's ``minLength``)."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator

import httpx
import openai
import pytest
from conftest import FakeHandle, make_gateway

from support.gateway_proc import GatewayProcess, default_models
from support.openai_schema import validate_response

LIMIT = 4096


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory, fake_upstream: FakeHandle) -> Iterator[GatewayProcess]:
    """A gateway whose ``fake-chat`` reads at most LIMIT bytes of an answer."""
    root = tmp_path_factory.mktemp("limits")
    models = default_models(fake_upstream.url)
    for alias in ("fake-chat", "mock", "mock-embed"):
        models["aliases"][alias]["deployments"][0]["max_answer_bytes"] = LIMIT
    proc = make_gateway(root, fake_upstream.url, f"sqlite:///{root / 'gateway.db'}", models=models).start()
    yield proc
    proc.stop()


def _client(gateway: GatewayProcess) -> openai.OpenAI:
    key = gateway.cli("keys", "create", "--team", "alpha", "--name", "limits").stdout.strip().splitlines()[-1]
    return openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=key, max_retries=0)


def _ledger_codes(gateway: GatewayProcess, expected: int) -> list[str]:
    database = gateway.config.root / "gateway.db"
    deadline = time.monotonic() + 10
    while True:
        with sqlite3.connect(database) as conn:
            rows = conn.execute("SELECT status || ' ' || coalesce(error_code, '-') FROM ledger ORDER BY id")
            codes = [row[0] for row in rows]
        if len(codes) >= expected or time.monotonic() > deadline:
            return codes
        time.sleep(0.1)


def test_answers_past_the_limit_fail_as_too_large_and_smaller_ones_pass(
    small: GatewayProcess, fake: FakeHandle
) -> None:
    client = _client(small)
    short = client.chat.completions.create(model="fake-chat", messages=[{"role": "user", "content": "hi"}])
    assert short.choices[0].message.content.startswith("Mock answer")

    many = {"model": "fake-chat", "messages": [{"role": "user", "content": "word " * 40}], "n": 30}
    response = httpx.post(f"{small.url}/v1/chat/completions", json=many, timeout=10,
                          headers={"Authorization": f"Bearer {client.api_key}"})
    assert response.status_code == 502, response.text
    validate_response("ErrorResponse", response.json())
    error = response.json()["error"]
    assert error["code"] == "upstream_answer_too_large" and "max_answer_bytes" in error["message"]

    # A stream: its first events fit and are relayed, then it ends with the error event.
    fake.configure(stream_chunks=200, chunk_delay_ms=2)
    stream = client.chat.completions.create(model="fake-chat", messages=[{"role": "user", "content": "word " * 40}],
                                            stream=True)
    received: list[str] = []
    with pytest.raises(openai.APIError, match="max_answer_bytes"):
        for chunk in stream:
            received.extend(choice.delta.content or "" for choice in chunk.choices)
    assert "".join(received).startswith("Mock answer")

    fake.configure(stream_chunks=8, chunk_delay_ms=0)
    again = client.chat.completions.create(model="fake-chat", messages=[{"role": "user", "content": "still here"}],
                                           stream=True)
    assert "".join(choice.delta.content or "" for chunk in again for choice in chunk.choices).startswith("Mock")
    # Recorded as failed (a stream's row says 502 though its 200 went out), in whichever order.
    too_large = "502 upstream_answer_too_large"
    assert sorted(_ledger_codes(small, 4)) == ["200 -", "200 -", too_large, too_large]


def test_the_mock_providers_answers_are_bounded_like_an_upstreams(small: GatewayProcess) -> None:
    client = _client(small)
    short = client.chat.completions.create(model="mock", messages=[{"role": "user", "content": "hi"}])
    assert short.choices[0].message.content == "Mock answer: hi"
    many = {"model": "mock", "messages": [{"role": "user", "content": "word " * 40}], "n": 30}
    response = httpx.post(f"{small.url}/v1/chat/completions", json=many, timeout=10,
                          headers={"Authorization": f"Bearer {client.api_key}"})
    assert response.status_code == 502, response.text
    validate_response("ErrorResponse", response.json())
    assert response.json()["error"]["code"] == "upstream_answer_too_large"

    stream = client.chat.completions.create(model="mock", messages=[{"role": "user", "content": "word " * 40}],
                                            n=30, stream=True)
    received: list[str] = []
    with pytest.raises(openai.APIError, match="max_answer_bytes"):
        for chunk in stream:
            received.extend(choice.delta.content or "" for choice in chunk.choices)
    assert "".join(received).startswith("Mock answer")

    assert len(client.embeddings.create(model="mock-embed", input=["a", "b"]).data) == 2
    # 2,048 vectors of 65,536 dimensions: gigabytes, refused before a vector is built.
    huge = {"model": "mock-embed", "input": ["a"] * 2048, "dimensions": 65_536}
    response = httpx.post(f"{small.url}/v1/embeddings", json=huge, timeout=10,
                          headers={"Authorization": f"Bearer {client.api_key}"})
    assert response.status_code == 502 and response.json()["error"]["code"] == "upstream_answer_too_large"


@pytest.mark.parametrize(
    "schema",
    [
        {"type": "object", "properties": {"a": {"type": "string", "minLength": 10**12}}, "required": ["a"]},
        # Each level multiplies the one below it: 1,000 ** 4 values.
        {"type": "array", "minItems": 1000, "items": {"type": "array", "minItems": 1000, "items": {
            "type": "array", "minItems": 1000, "items": {"type": "array", "minItems": 1000, "items": {}}}}},
    ],
)
def test_a_schema_the_mock_would_build_gigabytes_for_is_a_400_at_once(
    small: GatewayProcess, schema: dict[str, object]
) -> None:
    client = _client(small)
    with pytest.raises(openai.BadRequestError, match="minLength or minItems"):
        client.chat.completions.create(
            model="mock", messages=[{"role": "user", "content": "hi"}],
            response_format={"type": "json_schema", "json_schema": {"name": "s", "schema": schema}},
        )
    with pytest.raises(openai.BadRequestError, match="minLength or minItems"):
        client.chat.completions.create(
            model="mock", messages=[{"role": "user", "content": "hi"}], tool_choice="required",
            tools=[{"type": "function", "function": {"name": "f", "parameters": {
                "type": "object", "properties": {"x": schema}, "required": ["x"]}}}],
        )
    assert client.chat.completions.create(model="mock", messages=[{"role": "user", "content": "hi"}]).choices


def test_the_limit_is_checked_when_the_policy_is_loaded() -> None:
    from gateway.config.policies import DeploymentSpec

    with pytest.raises(ValueError, match="max_answer_bytes"):
        DeploymentSpec(provider="openai", model="m", base_url="http://x/v1", max_answer_bytes=0)
