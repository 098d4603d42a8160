"""The fake upstream and the mock answers it shares with the gateway's ``mock`` provider.

The fake is driven with real clients (the openai SDK, litellm's Anthropic path, plain httpx), because
its whole point is to be indistinguishable from a provider for them; every OpenAI payload is also
checked against OpenAI's published schemas.
"""

from __future__ import annotations

import base64
import json
import math
import os
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import openai
import pytest

from gateway.providers import mock_responses as mock
from gateway.testing import anthropic_answers as anthropic
from gateway.testing.fake_upstream import FakeUpstream
from support.openai_schema import validate_response, validate_stream_chunk
from support.servers import free_port, start_uvicorn_in_thread

REPO = Path(__file__).resolve().parents[1]
HELLO = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hello, fake world!"}]
HELLO_ANSWER = "Mock answer: Hello, fake world!"
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                "days": {"type": "integer", "minimum": 1, "maximum": 7},
                "detailed": {"type": "boolean"},
                "optional_note": {"type": "string"},
            },
            "required": ["city", "unit", "days", "detailed"],
        },
    },
}
ANSWER_SCHEMA = {
    "type": "object",
    "properties": {
        "answer": {"type": "string"},
        "confidence": {"type": "number", "minimum": 0, "maximum": 1},
        "votes": {"type": "integer"},
        "ok": {"type": "boolean"},
        "tags": {"type": "array", "items": {"type": "string"}, "minItems": 2},
        "mood": {"enum": ["happy", "sad"]},
        "nested": {
            "type": "object",
            "properties": {"n": {"type": ["integer", "null"]}},
            "required": ["n"],
            "additionalProperties": False,
        },
    },
    "required": ["answer", "confidence", "votes", "ok", "tags", "mood", "nested"],
    "additionalProperties": False,
}


# --- fixtures ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def http() -> Iterator[httpx.Client]:
    """One pooled client for control calls: a fresh ``httpx.post`` per call costs ~50 ms of TLS setup."""
    with httpx.Client(timeout=30) as client:
        yield client


@pytest.fixture(scope="module")
def fake_server() -> Iterator[tuple[str, FakeUpstream]]:
    app = FakeUpstream()
    base_url, stop = start_uvicorn_in_thread(app)
    try:
        yield base_url, app
    finally:
        stop()


@pytest.fixture
def base_url(fake_server: tuple[str, FakeUpstream], http: httpx.Client) -> Iterator[str]:
    """The fake's URL, with faults, counters and run-time config reset around each test."""
    url = fake_server[0]
    defaults = {"latency_ms": 0, "chunk_delay_ms": 0, "stream_chunks": 8, "require_key": None}
    http.post(f"{url}/_fake/reset").raise_for_status()
    http.post(f"{url}/_fake/config", json=defaults).raise_for_status()
    yield url
    http.post(f"{url}/_fake/reset").raise_for_status()
    http.post(f"{url}/_fake/config", json=defaults).raise_for_status()


@pytest.fixture
def client(base_url: str) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{base_url}/v1", api_key="sk-test", max_retries=0) as sdk:
        yield sdk


def queue_faults(http: httpx.Client, base_url: str, *faults: dict[str, Any]) -> None:
    response = http.post(f"{base_url}/_fake/faults", json=list(faults))
    response.raise_for_status()
    assert response.json()["queued"] == len(faults)


def stats(http: httpx.Client, base_url: str) -> dict[str, Any]:
    response = http.get(f"{base_url}/_fake/stats")
    response.raise_for_status()
    return response.json()


def sse_payloads(raw: bytes) -> list[str]:
    """The ``data:`` payloads of an SSE body, in order (ignoring ``event:`` lines)."""
    out = []
    for event in raw.decode().split("\n\n"):
        for line in event.split("\n"):
            if line.startswith("data: "):
                out.append(line[len("data: ") :])
    return out


# --- mock_responses: pure unit tests -------------------------------------------------------------


def test_count_tokens_heuristic() -> None:
    assert mock.count_tokens("") == 0
    assert mock.count_tokens("   ") == 1
    assert mock.count_tokens("Hello, world!") == 4
    assert mock.prompt_tokens({"messages": HELLO}) == mock.count_tokens("You are terse.") + 5
    parts = {"messages": [{"role": "user", "content": [{"type": "text", "text": "Hello, world!"}]}]}
    assert mock.prompt_tokens(parts) == 4
    assert mock.prompt_tokens({**parts, "tools": [WEATHER_TOOL]}) > 4


def test_chat_completion_is_deterministic_and_valid() -> None:
    body = {"model": "gpt-4o-mini", "messages": HELLO}
    first = mock.chat_completion(body)
    second = mock.chat_completion(json.loads(json.dumps(body)))
    assert first["choices"] == second["choices"]
    assert first["id"] == second["id"] and first["id"].startswith("chatcmpl-")
    assert first["choices"][0]["message"]["content"] == HELLO_ANSWER
    assert first["choices"][0]["finish_reason"] == "stop"
    assert first["system_fingerprint"] == "fp_mock"
    usage = first["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert usage["completion_tokens"] == mock.count_tokens(HELLO_ANSWER)
    assert mock.chat_completion(body, created=123, model="other")["created"] == 123
    assert mock.chat_completion(body, model="other")["model"] == "other"
    other = mock.chat_completion({**body, "messages": [{"role": "user", "content": "different"}]})
    assert other["id"] != first["id"]
    validate_response("CreateChatCompletionResponse", first)


def test_chat_completion_options() -> None:
    body: dict[str, Any] = {"model": "m", "messages": HELLO}
    two = mock.chat_completion({**body, "n": 2})
    contents = [c["message"]["content"] for c in two["choices"]]
    assert [c["index"] for c in two["choices"]] == [0, 1]
    assert contents[0] == HELLO_ANSWER and contents[1] != contents[0] and "fake world" in contents[1]

    short = mock.chat_completion({**body, "max_tokens": 3})["choices"][0]
    assert short["finish_reason"] == "length" and short["message"]["content"] == "Mock answer:"
    assert mock.chat_completion({**body, "max_completion_tokens": 2})["choices"][0]["message"]["content"] == (
        "Mock answer"
    )
    stopped = mock.chat_completion({**body, "stop": ["world", ","]})["choices"][0]
    assert stopped["finish_reason"] == "stop" and stopped["message"]["content"] == "Mock answer: Hello"
    assert mock.chat_completion({**body, "stop": "fake"})["choices"][0]["message"]["content"] == (
        "Mock answer: Hello, "
    )

    plain = mock.chat_completion({**body, "tools": [WEATHER_TOOL], "tool_choice": "none"})
    assert plain["choices"][0]["message"]["content"] == HELLO_ANSWER

    obj = mock.chat_completion({**body, "response_format": {"type": "json_object"}})
    assert json.loads(obj["choices"][0]["message"]["content"]) == {"answer": HELLO_ANSWER}

    fmt = {"type": "json_schema", "json_schema": {"name": "a", "strict": True, "schema": ANSWER_SCHEMA}}
    structured = json.loads(mock.chat_completion({**body, "response_format": fmt})["choices"][0]["message"]["content"])
    jsonschema.validate(structured, ANSWER_SCHEMA)
    assert structured["answer"] == HELLO_ANSWER

    with_lp = mock.chat_completion({**body, "logprobs": True, "top_logprobs": 2})
    validate_response("CreateChatCompletionResponse", with_lp)
    lp = with_lp["choices"][0]["logprobs"]
    assert lp["refusal"] is None
    assert "".join(t["token"] for t in lp["content"]) == HELLO_ANSWER
    assert all(len(t["top_logprobs"]) == 2 and t["logprob"] <= 0 for t in lp["content"])
    assert mock.chat_completion(body)["choices"][0]["logprobs"] is None


def test_tool_call_arguments_follow_the_schema() -> None:
    body = {"model": "m", "messages": HELLO, "tools": [WEATHER_TOOL]}
    answer = mock.chat_completion(body)
    validate_response("CreateChatCompletionResponse", answer)
    choice = answer["choices"][0]
    assert choice["finish_reason"] == "tool_calls" and choice["message"]["content"] is None
    (call,) = choice["message"]["tool_calls"]
    assert call["type"] == "function" and call["id"].startswith("call_")
    args = json.loads(call["function"]["arguments"])
    jsonschema.validate(args, WEATHER_TOOL["function"]["parameters"])
    assert set(args) == {"city", "unit", "days", "detailed"}

    second = {"type": "function", "function": {"name": "noop", "parameters": {"type": "object", "properties": {}}}}
    named = {**body, "tools": [WEATHER_TOOL, second], "tool_choice": {"type": "function", "function": {"name": "noop"}}}
    (call,) = mock.chat_completion(named)["choices"][0]["message"]["tool_calls"]
    assert call["function"] == {"name": "noop", "arguments": "{}"}


def test_schema_instances_are_built_up_to_the_answers_budget_and_refused_past_it() -> None:
    """One answer builds at most MAX_SCHEMA_CHARS characters and MAX_SCHEMA_VALUES values from
    JSON schemas, over all its choices; past either, ValueError before anything is built."""

    def structured(schema: dict[str, object], n: int = 1) -> dict[str, object]:
        return {"model": "m", "messages": HELLO, "n": n,
                "response_format": {"type": "json_schema", "json_schema": {"name": "s", "schema": schema}}}

    at_most = {"type": "string", "minLength": mock.MAX_SCHEMA_CHARS}
    assert len(json.loads(mock.chat_completion(structured(at_most))["choices"][0]["message"]["content"])) == (
        mock.MAX_SCHEMA_CHARS
    )
    with pytest.raises(ValueError, match="minLength or minItems"):
        mock.chat_completion(structured({"type": "string", "minLength": mock.MAX_SCHEMA_CHARS + 1}))
    with pytest.raises(ValueError, match="minLength or minItems"):  # the budget is the answer's, not a choice's
        mock.chat_completion(structured({"type": "string", "minLength": mock.MAX_SCHEMA_CHARS // 2 + 1}, n=2))
    values = {"type": "array", "minItems": mock.MAX_SCHEMA_VALUES, "items": {"type": "integer"}}
    assert len(json.loads(mock.chat_completion(structured(values))["choices"][0]["message"]["content"])) == (
        mock.MAX_SCHEMA_VALUES
    )
    with pytest.raises(ValueError, match="minLength or minItems"):
        mock.chat_completion(structured({**values, "minItems": mock.MAX_SCHEMA_VALUES + 1}))
    # Nested minItems (1,000 ** 4 values) are refused once one item of each outer level is built: the
    # rest of an array is charged what its first item cost, up front.
    nested: dict[str, object] = {}
    for _ in range(4):
        nested = {"type": "array", "minItems": 1000, "items": nested}
    built = 0
    build = mock._schema_instance

    def counted(*args: Any, **kwargs: Any) -> Any:
        nonlocal built
        built += 1
        return build(*args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(mock, "_schema_instance", counted)
        with pytest.raises(ValueError, match="minLength or minItems"):
            mock.tool_arguments({"type": "object", "properties": {"x": nested}, "required": ["x"]}, "f")
    assert built < 1_010  # the innermost array's 1,000 items and one of each level above, not 100,000
    one_level = {"type": "array", "minItems": 3,
                 "items": {"type": "array", "minItems": 2, "items": {"type": "integer"}}}
    content = json.loads(mock.chat_completion(structured(one_level))["choices"][0]["message"]["content"])
    assert [len(item) for item in content] == [2, 2, 2]
    # maxLength and maxItems still cut what minLength and minItems ask for, and cost only that.
    capped = {"type": "string", "minLength": 10**12, "maxLength": 3}
    assert json.loads(mock.chat_completion(structured(capped))["choices"][0]["message"]["content"]) == "Moc"


@pytest.mark.parametrize(
    "extra",
    [
        {},
        {"n": 2},
        {"logprobs": True, "top_logprobs": 1},
        {"max_tokens": 4},
        {"tools": [WEATHER_TOOL]},
        {"response_format": {"type": "json_object"}},
    ],
    ids=["plain", "n2", "logprobs", "max_tokens", "tools", "json"],
)
@pytest.mark.parametrize("include_usage", [False, True])
def test_stream_chunks_rebuild_the_completion(extra: dict[str, Any], include_usage: bool) -> None:
    body: dict[str, Any] = {"model": "m", "messages": HELLO, **extra}
    full = mock.chat_completion(body, created=1)
    stream_body = {**body, "stream": True, "stream_options": {"include_usage": include_usage}}
    chunks = mock.chat_stream_chunks(stream_body, created=1, chunks=3)
    for chunk in chunks:
        validate_stream_chunk(chunk)
        assert chunk["id"] == full["id"] and chunk["object"] == "chat.completion.chunk"
        assert ("usage" in chunk) == include_usage
    if include_usage:
        assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == full["usage"]
        assert all(c["usage"] is None for c in chunks[:-1])
        chunks = chunks[:-1]
    else:
        assert all(c["choices"] for c in chunks)

    for expected in full["choices"]:
        index = expected["index"]
        mine = [c["choices"][0] for c in chunks if c["choices"][0]["index"] == index]
        assert mine[0]["delta"]["role"] == "assistant"
        assert mine[-1]["delta"] == {} and mine[-1]["finish_reason"] == expected["finish_reason"]
        assert all(c["finish_reason"] is None for c in mine[:-1])
        message = expected["message"]
        if message["content"] is not None:
            text = "".join(c["delta"].get("content") or "" for c in mine)
            assert text == message["content"]
            assert 1 <= sum(1 for c in mine if c["delta"].get("content")) <= 3
        else:
            deltas = [tc for c in mine for tc in c["delta"].get("tool_calls") or []]
            assert deltas[0]["id"] == message["tool_calls"][0]["id"]
            assert deltas[0]["function"]["name"] == message["tool_calls"][0]["function"]["name"]
            assert (
                "".join(d["function"]["arguments"] for d in deltas) == message["tool_calls"][0]["function"]["arguments"]
            )
        if body.get("logprobs"):
            streamed = [t for c in mine for t in (c["logprobs"] or {}).get("content", [])]
            assert streamed == expected["logprobs"]["content"]


def test_sse_encoding() -> None:
    assert mock.sse_event({"a": 1}) == b'data: {"a":1}\n\n'
    assert mock.SSE_DONE == b"data: [DONE]\n\n"
    assert anthropic.anthropic_sse_event("ping", {"type": "ping"}) == b'event: ping\ndata: {"type":"ping"}\n\n'


def test_embeddings_are_deterministic_unit_vectors() -> None:
    floats = mock.embeddings({"model": "e", "input": ["alpha", "beta", "alpha"]})
    validate_response("CreateEmbeddingResponse", floats)
    vectors = [d["embedding"] for d in floats["data"]]
    assert [d["index"] for d in floats["data"]] == [0, 1, 2]
    assert len(vectors[0]) == mock.DEFAULT_EMBEDDING_DIMENSIONS
    assert vectors[0] == vectors[2] and vectors[0] != vectors[1]
    assert math.isclose(math.fsum(v * v for v in vectors[0]), 1.0, rel_tol=1e-5)
    assert floats["usage"] == {"prompt_tokens": 3, "total_tokens": 3}

    b64 = mock.embeddings({"model": "e", "input": "alpha", "encoding_format": "base64", "dimensions": 8})
    decoded = list(struct.unpack("<8f", base64.b64decode(b64["data"][0]["embedding"])))
    assert decoded == mock.embeddings({"model": "e", "input": "alpha", "dimensions": 8})["data"][0]["embedding"]

    tokens = mock.embeddings({"input": [[1, 2, 3], [4]]})
    assert len(tokens["data"]) == 2 and tokens["usage"]["prompt_tokens"] == 4
    assert len(mock.embeddings({"input": [1, 2, 3]})["data"]) == 1
    for bad in ({"input": []}, {"input": 3}, {"input": "x", "dimensions": 0}, {"input": "x", "encoding_format": "hex"}):
        with pytest.raises(ValueError):
            mock.embeddings(bad)


def test_anthropic_answers_match_openai() -> None:
    body = {
        "model": "claude-3-5-haiku-20241022",
        "system": "You are terse.",
        "messages": [{"role": "user", "content": [{"type": "text", "text": "Hello, fake world!"}]}],
        "max_tokens": 1024,
    }
    message = anthropic.anthropic_message(body)
    assert message["type"] == "message" and message["id"].startswith("msg_")
    assert message["content"] == [{"type": "text", "text": HELLO_ANSWER}]
    assert message["stop_reason"] == "end_turn" and message["stop_sequence"] is None
    assert message["usage"]["input_tokens"] == mock.chat_completion({"messages": HELLO})["usage"]["prompt_tokens"]

    events = anthropic.anthropic_stream_events(body, chunks=4)
    names = [name for name, _ in events]
    assert names[:3] == ["message_start", "content_block_start", "ping"]
    assert names[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert all(name == data["type"] for name, data in events)
    text = "".join(d["delta"]["text"] for n, d in events if n == "content_block_delta")
    assert text == HELLO_ANSWER
    assert events[-2][1]["usage"]["output_tokens"] == message["usage"]["output_tokens"]

    stopped = anthropic.anthropic_message({**body, "stop_sequences": ["fake"]})
    assert stopped["stop_reason"] == "stop_sequence" and stopped["stop_sequence"] == "fake"
    assert anthropic.anthropic_message({**body, "max_tokens": 2})["stop_reason"] == "max_tokens"


# --- the server through the openai SDK -----------------------------------------------------------


def test_sdk_chat_completion(client: openai.OpenAI, base_url: str, http: httpx.Client) -> None:
    answer = client.chat.completions.create(model="gpt-4o-mini", messages=HELLO, seed=7)  # type: ignore[arg-type]
    assert answer.choices[0].message.content == HELLO_ANSWER
    assert answer.choices[0].finish_reason == "stop"
    assert answer.model == "gpt-4o-mini" and answer.system_fingerprint == "fp_mock"
    assert answer.usage is not None and answer.usage.total_tokens > 0

    raw = http.post(f"{base_url}/v1/chat/completions", json={"model": "gpt-4o-mini", "messages": HELLO})
    assert raw.headers["content-type"] == "application/json"
    validate_response("CreateChatCompletionResponse", raw.json())
    # The same routes answer without the /v1 prefix.
    assert http.post(f"{base_url}/chat/completions", json={"model": "m", "messages": HELLO}).status_code == 200


def test_sdk_stream_with_usage(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model="gpt-4o-mini",
        messages=HELLO,  # type: ignore[arg-type]
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == mock.count_tokens(HELLO_ANSWER)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == HELLO_ANSWER
    assert chunks[-2].choices[0].finish_reason == "stop"


def test_raw_stream_framing(base_url: str, http: httpx.Client) -> None:
    body = {"model": "m", "messages": HELLO, "stream": True, "stream_options": {"include_usage": True}}
    with http.stream("POST", f"{base_url}/v1/chat/completions", json=body) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        raw = response.read()
    assert raw.endswith(b"data: [DONE]\n\n")
    payloads = sse_payloads(raw)
    assert payloads[-1] == "[DONE]"
    for payload in payloads[:-1]:
        validate_stream_chunk(json.loads(payload))
    # role chunk + 8 content chunks (the default) + finish chunk + usage chunk
    assert len(payloads) - 1 == 1 + min(8, len(mock.text_pieces(HELLO_ANSWER))) + 2


async def test_async_sdk_stream_and_chat(base_url: str) -> None:
    async with openai.AsyncOpenAI(base_url=f"{base_url}/v1", api_key="sk-test", max_retries=0) as sdk:
        answer = await sdk.chat.completions.create(model="gpt-4o", messages=HELLO)  # type: ignore[arg-type]
        stream = await sdk.chat.completions.create(model="gpt-4o", messages=HELLO, stream=True)  # type: ignore[arg-type]
        text = ""
        async for chunk in stream:
            assert chunk.usage is None
            if chunk.choices:
                text += chunk.choices[0].delta.content or ""
    assert text == answer.choices[0].message.content == HELLO_ANSWER


def test_sdk_tools(client: openai.OpenAI) -> None:
    answer = client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "Weather in Paris?"}],
        tools=[WEATHER_TOOL],  # type: ignore[list-item]
        tool_choice="auto",
    )
    choice = answer.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    assert choice.message.tool_calls is not None
    call = choice.message.tool_calls[0]
    assert call.function.name == "get_weather"  # type: ignore[union-attr]
    args = json.loads(call.function.arguments)  # type: ignore[union-attr]
    jsonschema.validate(args, WEATHER_TOOL["function"]["parameters"])  # type: ignore[index]

    stream = client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "Weather in Paris?"}],
        tools=[WEATHER_TOOL],  # type: ignore[list-item]
        stream=True,
    )
    arguments = ""
    finish = None
    for chunk in stream:
        for delta in chunk.choices[0].delta.tool_calls or []:
            assert delta.index == 0
            arguments += (delta.function.arguments if delta.function else None) or ""
        finish = chunk.choices[0].finish_reason or finish
    assert finish == "tool_calls" and json.loads(arguments) == args


def test_sdk_json_schema_response_format(client: openai.OpenAI) -> None:
    answer = client.chat.completions.create(
        model="gpt-4o-mini",
        messages=HELLO,  # type: ignore[arg-type]
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "answer", "strict": True, "schema": ANSWER_SCHEMA},
        },
    )
    content = answer.choices[0].message.content
    assert content is not None
    jsonschema.validate(json.loads(content), ANSWER_SCHEMA)


def test_sdk_n_and_logprobs(client: openai.OpenAI) -> None:
    answer = client.chat.completions.create(
        model="gpt-4o-mini",
        messages=HELLO,  # type: ignore[arg-type]
        n=2,
        logprobs=True,
        top_logprobs=3,
    )
    assert [c.index for c in answer.choices] == [0, 1]
    assert answer.choices[0].message.content != answer.choices[1].message.content
    for choice in answer.choices:
        assert choice.logprobs is not None and choice.logprobs.content
        assert "".join(t.token for t in choice.logprobs.content) == choice.message.content
        assert all(len(t.top_logprobs) == 3 for t in choice.logprobs.content)


def test_sdk_embeddings_base64_and_float(client: openai.OpenAI, base_url: str, http: httpx.Client) -> None:
    default = client.embeddings.create(model="text-embedding-3-small", input=["alpha", "beta"])
    assert stats(http, base_url)["last_request"]["body"]["encoding_format"] == "base64"  # the SDK's default
    floats = client.embeddings.create(model="text-embedding-3-small", input=["alpha", "beta"], encoding_format="float")
    assert [d.embedding for d in default.data] == [d.embedding for d in floats.data]
    assert len(default.data[0].embedding) == 16
    assert math.isclose(math.fsum(v * v for v in default.data[0].embedding), 1.0, rel_tol=1e-5)
    assert default.usage.prompt_tokens == 2
    sized = client.embeddings.create(model="text-embedding-3-small", input="alpha", dimensions=64)
    assert len(sized.data[0].embedding) == 64
    raw = http.post(f"{base_url}/v1/embeddings", json={"model": "e", "input": "alpha"})
    validate_response("CreateEmbeddingResponse", raw.json())
    bad = http.post(f"{base_url}/v1/embeddings", json={"model": "e", "input": 12})
    assert bad.status_code == 400 and bad.json()["error"]["type"] == "invalid_request_error"


def test_sdk_models(client: openai.OpenAI, base_url: str, http: httpx.Client) -> None:
    ids = [m.id for m in client.models.list()]
    assert "gpt-4o-mini" in ids and "text-embedding-3-small" in ids
    validate_response("ListModelsResponse", http.get(f"{base_url}/v1/models").json())
    assert client.models.retrieve("gpt-4o").id == "gpt-4o"


# --- faults, stats, config, auth -----------------------------------------------------------------


def test_fault_429_with_retry_after(client: openai.OpenAI, base_url: str, http: httpx.Client) -> None:
    queue_faults(http, base_url, {"status": 429, "retry_after": "7"})
    with pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(model="m", messages=HELLO)  # type: ignore[arg-type]
    assert caught.value.response.headers["retry-after"] == "7"
    validate_response("ErrorResponse", caught.value.response.json())
    # consumed: the next request is fine
    assert client.chat.completions.create(model="m", messages=HELLO).choices  # type: ignore[arg-type]

    # the SDK's own retry honours the short retry-after and then succeeds
    http.post(f"{base_url}/_fake/reset").raise_for_status()
    queue_faults(http, base_url, {"status": 429, "retry_after": "0.05"})
    retrying = client.with_options(max_retries=2)
    assert retrying.chat.completions.create(model="m", messages=HELLO).choices  # type: ignore[arg-type]
    assert stats(http, base_url)["requests"] == 2


def test_fault_500_and_times(client: openai.OpenAI, base_url: str, http: httpx.Client) -> None:
    queue_faults(http, base_url, {"status": 500, "times": 2})
    for _ in range(2):
        with pytest.raises(openai.InternalServerError) as caught:
            client.chat.completions.create(model="m", messages=HELLO)  # type: ignore[arg-type]
        assert caught.value.response.json()["error"]["type"] == "server_error"
    assert client.chat.completions.create(model="m", messages=HELLO).choices  # type: ignore[arg-type]


def test_fault_garbage(client: openai.OpenAI, base_url: str, http: httpx.Client) -> None:
    queue_faults(http, base_url, {"garbage": True}, {"garbage": True}, {"garbage": True})
    raw = http.post(f"{base_url}/v1/chat/completions", json={"model": "m", "messages": HELLO})
    assert raw.status_code == 200
    with pytest.raises(json.JSONDecodeError):
        raw.json()
    with pytest.raises((ValueError, openai.APIError)):
        client.chat.completions.create(model="m", messages=HELLO)  # type: ignore[arg-type]
    body = {"model": "m", "messages": HELLO, "stream": True}
    streamed = http.post(f"{base_url}/v1/chat/completions", json=body)
    assert streamed.status_code == 200 and sse_payloads(streamed.content) == []


def test_fault_disconnect_after_chunks(client: openai.OpenAI, base_url: str, http: httpx.Client) -> None:
    queue_faults(http, base_url, {"disconnect_after_chunks": 2}, {"disconnect_after_chunks": 3})
    body = {"model": "m", "messages": HELLO, "stream": True}
    raw = http.post(f"{base_url}/v1/chat/completions", json=body).content
    assert len(sse_payloads(raw)) == 2 and b"[DONE]" not in raw
    chunks = list(client.chat.completions.create(model="m", messages=HELLO, stream=True))  # type: ignore[arg-type]
    assert len(chunks) == 3 and all(c.choices[0].finish_reason is None for c in chunks)


def test_fault_delay_and_path_filter(client: openai.OpenAI, base_url: str, http: httpx.Client) -> None:
    queue_faults(http, base_url, {"delay_ms": 300, "path": "/v1/embeddings"})
    client.chat.completions.create(model="m", messages=HELLO)  # type: ignore[arg-type]
    # The fault is only for embeddings: the chat call left it queued. (Counted, not timed: a
    # wall-clock bound on the chat call fails on a loaded CI machine for no fault of the fake.)
    assert len(stats(http, base_url)["pending_faults"]) == 1
    started = time.perf_counter()
    client.embeddings.create(model="e", input="x")
    assert time.perf_counter() - started >= 0.3
    assert stats(http, base_url)["pending_faults"] == []


def test_slow_model_suffix(client: openai.OpenAI) -> None:
    started = time.perf_counter()
    client.chat.completions.create(model="gpt-4o-mini-slow", messages=HELLO)  # type: ignore[arg-type]
    assert time.perf_counter() - started >= 0.2


def test_invalid_faults_are_rejected(base_url: str, http: httpx.Client) -> None:
    for bad in ([{"status": "oops"}], [{"times": 0}], [{"unknown": 1}], "nope"):
        assert http.post(f"{base_url}/_fake/faults", json=bad).status_code == 400
    assert stats(http, base_url)["pending_faults"] == []


def test_stats_counters(client: openai.OpenAI, base_url: str, http: httpx.Client) -> None:
    client.chat.completions.create(model="gpt-4o-mini", messages=HELLO)  # type: ignore[arg-type]
    client.chat.completions.create(model="gpt-4o", messages=HELLO)  # type: ignore[arg-type]
    client.embeddings.create(model="text-embedding-3-small", input="x")
    http.get(f"{base_url}/_fake/stats")  # control calls are not counted
    http.post(f"{base_url}/_fake/config", json={})
    counters = stats(http, base_url)
    assert counters["requests"] == 3
    assert counters["by_path"] == {"/v1/chat/completions": 2, "/v1/embeddings": 1}
    assert counters["by_model"] == {"gpt-4o-mini": 1, "gpt-4o": 1, "text-embedding-3-small": 1}
    last = counters["last_request"]
    assert last["path"] == "/v1/embeddings"
    assert last["headers"]["authorization"] == "Bearer sk-test"
    assert last["body"] == {"model": "text-embedding-3-small", "input": "x", "encoding_format": "base64"}
    http.post(f"{base_url}/_fake/reset").raise_for_status()
    assert stats(http, base_url) == {
        "requests": 0,
        "by_path": {},
        "by_model": {},
        "last_request": None,
        "pending_faults": [],
    }


def test_unknown_route_and_bad_body(base_url: str, http: httpx.Client) -> None:
    missing = http.post(f"{base_url}/v1/nope", json={})
    assert missing.status_code == 404
    validate_response("ErrorResponse", missing.json())
    assert http.get(f"{base_url}/v1/chat/completions").status_code == 405
    bad = http.post(
        f"{base_url}/v1/chat/completions", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert bad.status_code == 400 and bad.json()["error"]["type"] == "invalid_request_error"
    assert http.post(f"{base_url}/v1/chat/completions", json={"model": "m"}).status_code == 400
    assert stats(http, base_url)["requests"] == 4


def test_require_key(base_url: str, http: httpx.Client) -> None:
    http.post(f"{base_url}/_fake/config", json={"require_key": "sk-right"}).raise_for_status()
    with (
        openai.OpenAI(base_url=f"{base_url}/v1", api_key="sk-wrong", max_retries=0) as wrong,
        pytest.raises(openai.AuthenticationError) as caught,
    ):
        wrong.chat.completions.create(model="m", messages=HELLO)  # type: ignore[arg-type]
    assert caught.value.response.json()["error"]["code"] == "invalid_api_key"
    with openai.OpenAI(base_url=f"{base_url}/v1", api_key="sk-right", max_retries=0) as right:
        assert right.chat.completions.create(model="m", messages=HELLO).choices  # type: ignore[arg-type]
    body = {"model": "c", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}
    assert http.post(f"{base_url}/v1/messages", json=body, headers={"x-api-key": "sk-right"}).status_code == 200
    denied = http.post(f"{base_url}/v1/messages", json=body, headers={"x-api-key": "nope"})
    assert denied.status_code == 401 and denied.json()["error"]["type"] == "authentication_error"


def test_require_key_constructor_option(http: httpx.Client) -> None:
    base_url, stop = start_uvicorn_in_thread(FakeUpstream(require_key="k", latency_ms=1, stream_chunks=2))
    try:
        body = {"model": "m", "messages": HELLO}
        assert http.post(f"{base_url}/v1/chat/completions", json=body).status_code == 401
        ok = http.post(f"{base_url}/v1/chat/completions", json=body, headers={"authorization": "Bearer k"})
        assert ok.status_code == 200
        streamed = http.post(
            f"{base_url}/v1/chat/completions", json={**body, "stream": True}, headers={"authorization": "Bearer k"}
        )
        assert len(sse_payloads(streamed.content)) == 1 + 2 + 1 + 1  # role, 2 deltas, finish, [DONE]
    finally:
        stop()


def test_runtime_config_stream_chunks_and_delay(client: openai.OpenAI, base_url: str, http: httpx.Client) -> None:
    config = http.post(f"{base_url}/_fake/config", json={"stream_chunks": 2, "chunk_delay_ms": 50}).json()
    assert config["stream_chunks"] == 2 and config["chunk_delay_ms"] == 50
    assert http.post(f"{base_url}/_fake/config", json={"stream_chunks": 0}).status_code == 400
    started = time.perf_counter()
    chunks = list(client.chat.completions.create(model="m", messages=HELLO, stream=True))  # type: ignore[arg-type]
    assert len(chunks) == 1 + 2 + 1
    assert time.perf_counter() - started >= 0.15  # three gaps between four chunks


# --- the Anthropic route, raw and through litellm ------------------------------------------------


def test_anthropic_route_raw(base_url: str, http: httpx.Client) -> None:
    body = {
        "model": "claude-3-5-haiku-20241022",
        "max_tokens": 100,
        "system": "You are terse.",
        "messages": [{"role": "user", "content": "Hello, fake world!"}],
    }
    answer = http.post(f"{base_url}/v1/messages", json=body).json()
    assert answer["content"][0]["text"] == HELLO_ANSWER
    with http.stream("POST", f"{base_url}/v1/messages", json={**body, "stream": True}) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        raw = response.read().decode()
    events = [e for e in raw.split("\n\n") if e]
    assert events[0].startswith("event: message_start\ndata: ")
    assert events[-1] == 'event: message_stop\ndata: {"type":"message_stop"}'
    queue_faults(http, base_url, {"status": 529})
    overloaded = http.post(f"{base_url}/v1/messages", json=body)
    assert overloaded.status_code == 529 and overloaded.json()["error"]["type"] == "overloaded_error"


@pytest.fixture(scope="module")
def litellm_module() -> Any:
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # never fetch the remote price map
    litellm = pytest.importorskip("litellm")
    litellm.telemetry = False
    litellm.suppress_debug_info = True
    return litellm


async def test_litellm_anthropic(litellm_module: Any, base_url: str, http: httpx.Client) -> None:
    messages = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hello, fake world!"}]
    answer = await litellm_module.acompletion(
        model="anthropic/claude-3-5-haiku-20241022", api_base=base_url, api_key="x", messages=messages
    )
    assert answer.choices[0].message.content == HELLO_ANSWER
    assert answer.choices[0].finish_reason == "stop"
    assert answer.usage.completion_tokens == mock.count_tokens(HELLO_ANSWER)
    last = stats(http, base_url)["last_request"]
    assert last["path"] == "/v1/messages" and last["headers"]["x-api-key"] == "x"
    assert last["body"]["system"]

    stream = await litellm_module.acompletion(
        model="anthropic/claude-3-5-haiku-20241022",
        api_base=base_url,
        api_key="x",
        messages=messages,
        stream=True,
        stream_options={"include_usage": True},
    )
    text = ""
    finish = None
    usage = None
    async for chunk in stream:
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
            finish = chunk.choices[0].finish_reason or finish
        usage = getattr(chunk, "usage", None) or usage
    assert text == HELLO_ANSWER and finish == "stop"
    assert usage is not None and usage.completion_tokens == mock.count_tokens(HELLO_ANSWER)


async def test_litellm_anthropic_tools(litellm_module: Any, base_url: str) -> None:
    answer = await litellm_module.acompletion(
        model="anthropic/claude-3-5-haiku-20241022",
        api_base=base_url,
        api_key="x",
        messages=[{"role": "user", "content": "Weather in Paris?"}],
        tools=[WEATHER_TOOL],
    )
    (call,) = answer.choices[0].message.tool_calls
    assert answer.choices[0].finish_reason == "tool_calls" and call.function.name == "get_weather"
    jsonschema.validate(json.loads(call.function.arguments), WEATHER_TOOL["function"]["parameters"])


# --- the command line ----------------------------------------------------------------------------


def test_python_dash_m_entry_point() -> None:
    port = free_port()
    command = [sys.executable, "-m", "gateway.testing.fake_upstream", "--port", str(port), "--stream-chunks", "3"]
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                response = httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=1)
                break
            except httpx.TransportError:
                assert process.poll() is None, process.stderr.read().decode() if process.stderr else ""
                assert time.monotonic() < deadline, "the fake upstream did not start"
                time.sleep(0.1)
        assert response.status_code == 200
        config = httpx.get(f"http://127.0.0.1:{port}/_fake/config").json()
        assert config["stream_chunks"] == 3
    finally:
        process.terminate()
        process.wait(timeout=10)
