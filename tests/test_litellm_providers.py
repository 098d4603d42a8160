"""Non-OpenAI providers go through litellm: Anthropic, against a local fake of its
Messages API, called by the `openai` SDK through the gateway."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
from conftest import FakeHandle

from support.gateway_proc import GatewayConfig, GatewayProcess, default_models
from support.openai_schema import validate_response, validate_stream_chunk


@pytest.fixture(scope="module")
def anthropic_gateway(tmp_path_factory: pytest.TempPathFactory, fake_upstream: FakeHandle) -> Iterator[GatewayProcess]:
    root: Path = tmp_path_factory.mktemp("anthropic")
    models = default_models(fake_upstream.url)
    models["aliases"]["claude"] = {
        "deployments": [
            {
                "provider": "anthropic",
                "model": "claude-haiku-4-5",
                "base_url": fake_upstream.url,
                "api_key": "${TEST_PROVIDER_KEY}",
                "timeout_s": 10,
                "retries": 0,
            }
        ]
    }
    # The same, reading at most 512 bytes of an answer (max_answer_bytes).
    models["aliases"]["claude-small"] = {
        "deployments": [{**models["aliases"]["claude"]["deployments"][0], "max_answer_bytes": 512}]
    }
    proc = GatewayProcess(
        GatewayConfig(root=root, upstream=fake_upstream.url, database_url=f"sqlite:///{root / 'g.db'}",
                      models=models)
    ).start(timeout=60)
    yield proc
    proc.stop()


@pytest.fixture
def client(anthropic_gateway: GatewayProcess) -> openai.OpenAI:
    key = anthropic_gateway.create_key("alpha")
    return openai.OpenAI(base_url=f"{anthropic_gateway.url}/v1", api_key=key, max_retries=0)


def test_anthropic_completion(client: openai.OpenAI, fake: FakeHandle) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="claude",
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a colour"}],
        max_tokens=50,
    )
    completion = raw.parse()
    assert completion.choices[0].message.content == "Mock answer: Name a colour"
    assert completion.usage is not None and completion.usage.prompt_tokens > 0
    validate_response("CreateChatCompletionResponse", raw.http_response.json())
    last = fake.stats()["last_request"]
    assert last["path"].endswith("/messages")
    assert last["body"]["system"] in ("Be brief.", [{"type": "text", "text": "Be brief."}])
    assert last["headers"]["x-api-key"] == "sk-upstream-secret-provider-key-42"


def test_anthropic_stream(client: openai.OpenAI, fake: FakeHandle) -> None:
    chunks = list(
        client.chat.completions.create(
            model="claude", messages=[{"role": "user", "content": "stream a sentence"}], max_tokens=50, stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Mock answer: stream a sentence"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
    for chunk in chunks:
        validate_stream_chunk(chunk.model_dump(exclude_unset=True))


def test_anthropic_errors_are_translated(client: openai.OpenAI, fake: FakeHandle) -> None:
    fake.faults({"status": 429, "path": "/v1/messages"})
    with pytest.raises(openai.RateLimitError) as rate_limited:
        client.chat.completions.create(model="claude", messages=[{"role": "user", "content": "x"}], max_tokens=5)
    assert rate_limited.value.body["code"] == "upstream_rate_limited"  # type: ignore[index]
    fake.faults({"status": 529, "path": "/v1/messages"})
    with pytest.raises(openai.APIStatusError) as overloaded:
        client.chat.completions.create(model="claude", messages=[{"role": "user", "content": "x"}], max_tokens=5)
    assert overloaded.value.status_code == 502


def test_anthropic_answers_past_max_answer_bytes_are_refused(client: openai.OpenAI, fake: FakeHandle) -> None:
    question = [{"role": "user", "content": "word " * 40}]
    whole = client.chat.completions.with_raw_response.create(model="claude", messages=question, max_tokens=200)
    assert len(whole.http_response.content) > 512  # what the small alias may not pass on
    with pytest.raises(openai.APIStatusError) as refused:
        client.chat.completions.create(model="claude-small", messages=question, max_tokens=200)
    assert refused.value.status_code == 502
    assert refused.value.body["code"] == "upstream_answer_too_large"  # type: ignore[index]

    fake.configure(stream_chunks=64)
    received: list[str] = []
    with pytest.raises(openai.APIError, match="max_answer_bytes"):
        for chunk in client.chat.completions.create(model="claude-small", messages=question, max_tokens=200,
                                                    stream=True):
            received.extend(choice.delta.content or "" for choice in chunk.choices)
    assert "".join(received).startswith("Mock answer")  # what came within the bound was relayed
