"""The OpenAI-compatible API end to end: the real `openai` SDK against a running gateway.

Every answer is validated against OpenAI's own schemas (tests/fixtures/openai_schemas.json).
"""

from __future__ import annotations

import asyncio

import httpx
import openai
import pytest
from conftest import FakeHandle

from support.gateway_proc import GatewayProcess
from support.openai_schema import validate_response, validate_stream_chunk


@pytest.fixture
def client(gateway: GatewayProcess, team_keys: dict[str, str]) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=team_keys["alpha"], max_retries=0)


def test_chat_completion_through_the_sdk(client: openai.OpenAI, fake: FakeHandle) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="fake-chat",
        messages=[{"role": "user", "content": "What is the capital of France?"}],
        seed=7,
        stop=["zzz"],
        n=2,
    )
    completion = raw.parse()
    assert completion.choices[0].message.content == "Mock answer: What is the capital of France?"
    assert len(completion.choices) == 2
    assert completion.usage is not None and completion.usage.total_tokens > 0
    validate_response("CreateChatCompletionResponse", raw.http_response.json())
    assert raw.headers["x-request-id"]
    assert float(raw.headers["x-gateway-overhead-ms"]) >= 0
    # The upstream got the deployment's model name and the provider key, not the caller's key.
    last = fake.stats()["last_request"]
    assert last["body"]["model"] == "gpt-4o-mini"
    assert last["body"]["seed"] == 7 and last["body"]["n"] == 2 and last["body"]["stop"] == ["zzz"]
    assert last["headers"]["authorization"] == "Bearer sk-upstream-secret-provider-key-42"


def test_streaming_with_usage(client: openai.OpenAI, fake: FakeHandle) -> None:
    stream = client.chat.completions.create(
        model="fake-chat",
        messages=[{"role": "user", "content": "stream me a few words please"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Mock answer: stream me a few words please"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    for chunk in chunks:
        validate_stream_chunk(chunk.model_dump(exclude_unset=True))


def test_streaming_without_usage_hides_the_usage_chunk(client: openai.OpenAI, fake: FakeHandle) -> None:
    chunks = list(
        client.chat.completions.create(
            model="fake-chat", messages=[{"role": "user", "content": "hi"}], stream=True
        )
    )
    assert all(chunk.choices for chunk in chunks), "a caller that did not ask for usage gets no usage chunk"
    # ...but the gateway asked the upstream for it, to count spend.
    assert fake.stats()["last_request"]["body"]["stream_options"] == {"include_usage": True}


def test_raw_sse_ends_with_done(gateway: GatewayProcess, team_keys: dict[str, str], fake: FakeHandle) -> None:
    with httpx.stream(
        "POST",
        f"{gateway.url}/v1/chat/completions",
        headers={"Authorization": f"Bearer {team_keys['alpha']}"},
        json={"model": "fake-chat", "stream": True, "messages": [{"role": "user", "content": "x"}]},
    ) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        body = b"".join(response.iter_bytes())
    events = [e for e in body.split(b"\n\n") if e]
    assert events[-1] == b"data: [DONE]"
    assert all(e.startswith(b"data: ") for e in events)


def test_tools_and_response_format_pass_through(client: openai.OpenAI, fake: FakeHandle) -> None:
    tools = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "parameters": {
                    "type": "object",
                    "properties": {"city": {"type": "string"}},
                    "required": ["city"],
                },
            },
        }
    ]
    raw = client.chat.completions.with_raw_response.create(
        model="fake-chat", messages=[{"role": "user", "content": "weather in Paris?"}], tools=tools,
        tool_choice="auto",
    )
    completion = raw.parse()
    call = completion.choices[0].message.tool_calls[0]
    assert call.function.name == "get_weather"
    assert completion.choices[0].finish_reason == "tool_calls"
    validate_response("CreateChatCompletionResponse", raw.http_response.json())
    assert fake.stats()["last_request"]["body"]["tools"] == tools

    structured = client.chat.completions.create(
        model="fake-chat",
        messages=[{"role": "user", "content": "json please"}],
        response_format={"type": "json_object"},
        logprobs=True,
        top_logprobs=2,
    )
    assert structured.choices[0].message.content.startswith("{")
    assert structured.choices[0].logprobs is not None


def test_embeddings(client: openai.OpenAI, fake: FakeHandle) -> None:
    raw = client.embeddings.with_raw_response.create(
        model="fake-embed", input=["one", "two"], encoding_format="float"
    )
    validate_response("CreateEmbeddingResponse", raw.http_response.json())
    # The SDK's default (base64) is decoded by the SDK.
    result = client.embeddings.create(model="fake-embed", input="hello")
    assert len(result.data[0].embedding) > 0
    assert fake.stats()["last_request"]["body"]["model"] == "text-embedding-3-small"


def test_models_list_is_filtered_by_team(gateway: GatewayProcess, team_keys: dict[str, str]) -> None:
    alpha = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=team_keys["alpha"])
    beta = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=team_keys["beta"])
    raw = alpha.models.with_raw_response.list()
    validate_response("ListModelsResponse", raw.http_response.json())
    alpha_ids = {m.id for m in raw.parse()}
    beta_ids = {m.id for m in beta.models.list()}
    assert {"fake-chat", "fake-embed", "mock"} <= alpha_ids
    assert {"fake-chat", "mock"} <= beta_ids and "fake-embed" not in beta_ids


def test_builtin_mock_model_works_offline(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(model="mock", messages=[{"role": "user", "content": "ping"}])
    assert completion.choices[0].message.content == "Mock answer: ping"
    chunks = list(
        client.chat.completions.create(
            model="mock", messages=[{"role": "user", "content": "ping"}], stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[-1].usage is not None
    embedding = client.embeddings.create(model="mock-embed", input="x")
    assert embedding.data[0].embedding


async def test_async_client_concurrency(gateway: GatewayProcess, team_keys: dict[str, str], fake: FakeHandle) -> None:
    client = openai.AsyncOpenAI(base_url=f"{gateway.url}/v1", api_key=team_keys["alpha"], max_retries=0)
    results = await asyncio.gather(
        *(
            client.chat.completions.create(model="fake-chat", messages=[{"role": "user", "content": f"q{i}"}])
            for i in range(40)
        )
    )
    assert [r.choices[0].message.content for r in results] == [f"Mock answer: q{i}" for i in range(40)]
    await client.close()


def test_langchain_chat_openai(gateway: GatewayProcess, team_keys: dict[str, str], fake: FakeHandle) -> None:
    from langchain_openai import ChatOpenAI

    llm = ChatOpenAI(model="fake-chat", base_url=f"{gateway.url}/v1", api_key=team_keys["alpha"], max_retries=0)
    assert llm.invoke("hello from langchain").content == "Mock answer: hello from langchain"
    streamed = "".join(chunk.content for chunk in llm.stream("streaming via langchain"))
    assert streamed == "Mock answer: streaming via langchain"
