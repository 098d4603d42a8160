"""Property-based fuzzing of ``/v1/chat/completions`` and ``/v1/embeddings`` on a running gateway.

Thousands of generated bodies and headers, valid-ish and hostile (wrong types, huge and
negative numbers, deep nesting, odd unicode, junk JSON, odd auth headers, cache directives),
go to a real ``gateway serve`` with a cache-enabled team, so the parse, resolve, cache, budget
and upstream stages all see them. Whatever arrives: never a 5xx, every error OpenAI-shaped,
every 200 valid against OpenAI's schema, and the server keeps answering ``/health/live``.
"""

from __future__ import annotations

import string
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from support.cache import create_key, start_gateway
from support.gateway_proc import GatewayProcess
from support.openai_schema import validate_response

pytestmark = pytest.mark.slow

EXAMPLES_PER_ENDPOINT = 1200  # two endpoints: 2,400 generated requests in all

json_leaf = st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70) | st.floats() | st.text(
    max_size=40
)
json_value = st.recursive(json_leaf, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
    st.text(max_size=10), inner, max_size=4), max_leaves=20)
odd_text = st.text(alphabet=st.characters(codec="utf-8"), max_size=60)
numberish = st.one_of(st.integers(min_value=-(2**65), max_value=2**65), st.floats(allow_nan=False), st.text(
    max_size=5), st.none(), st.booleans())
models = st.sampled_from(["mock", "mock-embed", "fake-chat", "prompt:missing", "", "no-such-model", "prompt:"])
messages = st.one_of(
    st.lists(st.fixed_dictionaries({"role": st.sampled_from(["user", "system", "assistant", "", "tool"]),
                                    "content": st.one_of(odd_text, json_value)}), max_size=4),
    json_value,
)
chat_bodies = st.fixed_dictionaries(
    {"model": st.one_of(models, json_value), "messages": messages},
    optional={
        "stream": st.one_of(st.booleans(), json_value),
        "stream_options": st.one_of(st.fixed_dictionaries({"include_usage": st.one_of(st.booleans(), json_value)}),
                                    json_value),
        "n": numberish, "max_tokens": numberish, "max_completion_tokens": numberish, "temperature": numberish,
        "top_p": numberish, "top_logprobs": numberish, "seed": numberish, "user": st.one_of(odd_text, json_value),
        "variables": json_value, "metadata": json_value, "tools": json_value, "response_format": json_value,
        "api_base": st.just("http://127.0.0.1:9/steal"), "extra_headers": json_value,
    },
)
embedding_bodies = st.fixed_dictionaries(
    {"model": st.one_of(models, json_value), "input": st.one_of(odd_text, st.lists(odd_text, max_size=3), json_value)},
    optional={"encoding_format": st.one_of(st.sampled_from(["float", "base64"]), json_value),
              "dimensions": numberish, "user": odd_text},
)
# Raw bodies: deep nesting, junk, non-objects.
deep = st.integers(min_value=100, max_value=1100).map(
    lambda d: b'{"model":"mock","messages":' + b"[" * d + b"]" * d + b"}"
)
raw_bodies = st.one_of(
    deep,
    st.binary(max_size=200),
    st.sampled_from([b"", b"null", b"[]", b'"x"', b"{", b'{"model": 1e999}', b'{"model":"mock","n":1e400}']),
)


def headers_for(key: str) -> st.SearchStrategy[dict[str, str]]:
    auth = st.sampled_from([f"Bearer {key}", f"bearer {key}", key, "Bearer", "Bearer gw-nope", "Basic abc", ""])
    return st.fixed_dictionaries(
        {"authorization": auth, "content-type": st.sampled_from(["application/json", "text/plain", ""])},
        optional={
            "x-request-id": st.text(alphabet=string.ascii_letters + string.digits + string.punctuation + " ",
                                   max_size=80).map(str.strip),
            "cache-control": st.sampled_from(["no-cache", "no-store", "max-age=0", "max-age=-1", "max-age=9e99",
                                              "garbage", "no-cache, no-store"]),
        },
    )


@pytest.fixture(scope="module")
def fuzz_gateway(tmp_path_factory: pytest.TempPathFactory, fake_upstream: Any) -> Iterator[tuple[GatewayProcess, str]]:
    root: Path = tmp_path_factory.mktemp("fuzz")
    gateway = start_gateway(root, fake_upstream.url)
    yield gateway, create_key(gateway.url, "beta")  # a team with the cache on
    gateway.stop()


class Checker:
    def __init__(self, gateway: GatewayProcess) -> None:
        self.client = httpx.Client(base_url=gateway.url, timeout=30)
        self.sent = 0

    def send(self, path: str, content: bytes, headers: dict[str, str]) -> None:
        response = self.client.post(path, content=content, headers={k: v for k, v in headers.items() if v})
        self.sent += 1
        assert response.status_code < 500, (response.status_code, response.text[:500], content[:300])
        if response.status_code >= 400:
            error = response.json()["error"]
            assert set(error) >= {"message", "type", "param", "code"}, error
        elif "text/event-stream" not in response.headers.get("content-type", "") and b"base64" not in content:
            # (OpenAI's schema types every embedding as an array; base64 ones are strings, as OpenAI sends them)
            schema = "CreateChatCompletionResponse" if path.endswith("completions") else "CreateEmbeddingResponse"
            validate_response(schema, response.json())
        if self.sent % 200 == 0:
            assert self.client.get("/health/live").status_code == 200


def encode(body: Any) -> bytes:
    try:
        return orjson.dumps(body)
    except TypeError:  # nesting orjson will not write (the raw strategy covers deep bodies)
        return b'{"model": "mock"}'


def test_fuzz_chat_completions(fuzz_gateway: tuple[GatewayProcess, str]) -> None:
    gateway, key = fuzz_gateway
    checker = Checker(gateway)

    @settings(max_examples=EXAMPLES_PER_ENDPOINT, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(body=st.one_of(chat_bodies.map(encode), raw_bodies), headers=headers_for(key))
    def check(body: bytes, headers: dict[str, str]) -> None:
        checker.send("/v1/chat/completions", body, headers)

    check()
    assert checker.sent >= EXAMPLES_PER_ENDPOINT
    assert checker.client.get("/health/live").status_code == 200


def test_fuzz_embeddings(fuzz_gateway: tuple[GatewayProcess, str]) -> None:
    gateway, key = fuzz_gateway
    checker = Checker(gateway)

    @settings(max_examples=EXAMPLES_PER_ENDPOINT, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(body=st.one_of(embedding_bodies.map(encode), raw_bodies), headers=headers_for(key))
    def check(body: bytes, headers: dict[str, str]) -> None:
        checker.send("/v1/embeddings", body, headers)

    check()
    assert checker.sent >= EXAMPLES_PER_ENDPOINT
    assert checker.client.get("/health/live").status_code == 200
