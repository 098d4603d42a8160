"""Token counting: offline, with the encoding each model uses, and loud when one is missing."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import orjson
import pytest
from conftest import FakeHandle, make_gateway
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.budgets import Budget
from gateway.config.settings import load_settings
from gateway.runtime import Runtime, create_runtime
from gateway.usage import MeterUsage
from gateway.usage.tokens import (
    FALLBACK_ENCODING,
    IMAGE_TOKENS,
    ByteBound,
    EncodingMissing,
    TiktokenTokenizer,
    TokenCounter,
    default_encodings_dir,
    encoding_file,
    encoding_for,
)
from support.budgets import catalog_of, priced_models
from support.gateway_proc import ADMIN_KEY, PROVIDER_KEY, GatewayConfig, default_models

# OpenAI's cookbook example ("How to count tokens with tiktoken"), whose counts the cookbook
# checked against the API: 129 prompt tokens for gpt-4 (cl100k_base), 124 for gpt-4o-mini.
COOKBOOK = [
    {"role": "system", "content": "You are a helpful, pattern-following assistant that translates corporate "
                                  "jargon into plain English."},
    {"role": "system", "name": "example_user", "content": "New synergies will help drive top-line growth."},
    {"role": "system", "name": "example_assistant", "content": "Things working well together will increase revenue."},
    {"role": "system", "name": "example_user", "content": "Let's circle back when we have more bandwidth to touch "
                                                          "base on opportunities for increased leverage."},
    {"role": "system", "name": "example_assistant", "content": "Let's talk later when we're less busy about how to "
                                                               "do better."},
    {"role": "user", "content": "This late pivot means we don't have time to boil the ocean for the client "
                                "deliverable."},
]


@pytest.fixture(scope="module")
def counter() -> TokenCounter:
    return TokenCounter()


def _deployment(counter: TokenCounter, alias: str, index: int = 0):  # type: ignore[no-untyped-def]
    return catalog_of(priced_models(), {"teams": {}}).aliases[alias].deployments[index]


def test_models_map_to_their_encodings() -> None:
    assert encoding_for("openai", "gpt-4o-mini") == "o200k_base"
    assert encoding_for("openai", "gpt-4o-2024-08-06") == "o200k_base"
    assert encoding_for("azure", "azure/gpt-4o") == "o200k_base"
    assert encoding_for("openai", "gpt-4") == "cl100k_base"
    assert encoding_for("openai", "gpt-3.5-turbo") == "cl100k_base"
    assert encoding_for("openai", "text-embedding-3-small") == "cl100k_base"
    # Unknown model behind an OpenAI-compatible server: an estimate; another provider: litellm.
    assert encoding_for("openai", "llama-3.1-8b-instruct") == FALLBACK_ENCODING
    assert encoding_for("anthropic", "claude-3-5-haiku-20241022") is None


def test_chat_counts_match_openai_billing(counter: TokenCounter) -> None:
    assert counter.encoding("cl100k_base").name == "cl100k_base"
    gpt4 = TiktokenTokenizer(counter.encoding("cl100k_base"))
    gpt4o = TiktokenTokenizer(counter.encoding("o200k_base"))
    assert gpt4.count_messages(COOKBOOK) == 129
    assert gpt4o.count_messages(COOKBOOK) == 124


def test_counts_follow_the_deployment(counter: TokenCounter) -> None:
    mini, gpt4 = catalog_of(priced_models(), {"teams": {}}).aliases["priced-pair"].deployments
    body = {"messages": COOKBOOK}
    assert counter.prompt_tokens(mini, "chat", body) == 124
    assert counter.prompt_tokens(gpt4, "chat", body) == 129
    embed = catalog_of(priced_models(), {"teams": {}}).aliases["embed"].deployments[0]
    text = "The food was delicious and the waiter..."
    assert counter.prompt_tokens(embed, "embeddings", {"input": text}) == 8
    assert counter.prompt_tokens(embed, "embeddings", {"input": [text, text]}) == 16
    assert counter.prompt_tokens(embed, "embeddings", {"input": [1, 2, 3]}) == 3  # already tokens
    assert counter.prompt_tokens(embed, "embeddings", {"input": [[1, 2], [3, 4, 5]]}) == 5


def test_names_tools_images_and_tool_calls_are_counted(counter: TokenCounter) -> None:
    tokenizer = TiktokenTokenizer(counter.encoding("o200k_base"))
    plain = [{"role": "user", "content": "What is the weather in Paris?"}]
    base = tokenizer.count_messages(plain)
    assert base == 3 + 3 + tokenizer.count_text("user") + tokenizer.count_text("What is the weather in Paris?")
    named = [{"role": "user", "name": "ana", "content": "What is the weather in Paris?"}]
    assert tokenizer.count_messages(named) == base + tokenizer.count_text("ana") + 1
    tools = [{"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}}]
    assert tokenizer.count_messages(plain, tools) == base + tokenizer.count_text(orjson.dumps(tools).decode())
    image = [{"role": "user", "content": [
        {"type": "text", "text": "What is the weather in Paris?"},
        {"type": "image_url", "image_url": {"url": "https://example.com/x.png"}},
    ]}]
    assert tokenizer.count_messages(image) == base + IMAGE_TOKENS
    call = [{"role": "assistant", "content": None, "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "weather", "arguments": '{"city":"Paris"}'}}]}]
    assert tokenizer.count_messages(call) > tokenizer.count_messages([{"role": "assistant", "content": None}])


def test_output_is_counted_from_bodies_and_streams(counter: TokenCounter) -> None:
    mini = _deployment(counter, "priced")
    text = "Paris is sunny today, with a light breeze from the west."
    expected = TiktokenTokenizer(counter.encoding("o200k_base")).count_text(text)
    body = {"choices": [{"index": 0, "message": {"role": "assistant", "content": text}}]}
    assert counter.completion_tokens(mini, body) == expected
    words = text.split(" ")
    pieces = [words[0]] + [" " + word for word in words[1:]]
    events = [
        b"data: " + orjson.dumps({"choices": [{"index": 0, "delta": {"content": piece}}]}) + b"\n\n"
        for piece in pieces
    ]
    # Relayed in arbitrary batches, with a usage-less final chunk and [DONE].
    relayed = [b"".join(events[:3]), b"".join(events[3:]),
               b'data: {"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\ndata: [DONE]\n\n']
    assert counter.stream_completion_tokens(mini, relayed) == expected
    assert counter.stream_completion_tokens(mini, relayed[:1]) < expected  # a stream cut short


def test_a_missing_encoding_fails_loudly(tmp_path: Path) -> None:
    empty = TokenCounter(tmp_path)
    with pytest.raises(EncodingMissing) as caught:
        empty.encoding("o200k_base")
    message = str(caught.value)
    assert "o200k_base" in message and str(tmp_path) in message and "never downloads" in message

    catalog = catalog_of(priced_models(), {"teams": {}})
    with pytest.raises(EncodingMissing) as caught:
        TokenCounter(tmp_path).require(catalog)
    problems = "\n".join(caught.value.problems)
    assert "'o200k_base'" in problems and "'cl100k_base'" in problems
    assert "model 'gpt-4o-mini' of alias 'priced'" in problems

    # With only cl100k present, gpt-4o-mini is still refused at start-up...
    source = default_encodings_dir()
    assert source is not None
    shutil.copy(encoding_file(source, "cl100k_base"), encoding_file(tmp_path, "cl100k_base"))
    partial = TokenCounter(tmp_path)
    with pytest.raises(EncodingMissing, match="o200k_base"):
        partial.require(catalog)
    # ...and after start-up (a policy reload) the same model reserves by bytes rather than fail.
    tokenizer = partial.for_deployment(catalog.aliases["priced"].deployments[0])
    assert isinstance(tokenizer, ByteBound)
    assert tokenizer.count_text("héllo") == len("héllo".encode())

    # A corrupt file is refused too: tiktoken would delete it and try to download it again.
    encoding_file(tmp_path, "o200k_base").write_bytes(b"not an encoding")
    with pytest.raises(EncodingMissing, match="corrupt"):
        TokenCounter(tmp_path).encoding("o200k_base")


def test_counting_works_without_network() -> None:
    # A fresh interpreter where every socket connection fails and tiktoken's own cache
    # variable points nowhere: the encodings still load, from the bundled files.
    script = textwrap.dedent("""
        import socket
        def refuse(*args, **kwargs):
            raise OSError("network disabled by the test")
        socket.socket.connect = refuse
        socket.create_connection = refuse
        from gateway.usage.tokens import TiktokenTokenizer, TokenCounter
        counter = TokenCounter()
        for name in ("o200k_base", "cl100k_base"):
            print(name, TiktokenTokenizer(counter.encoding(name)).count_text("hello offline world"))
    """)
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
        env={"PATH": "/usr/bin:/bin", "TIKTOKEN_CACHE_DIR": "/nonexistent/tiktoken", "HOME": "/nonexistent"},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["o200k_base", "3", "cl100k_base", "3"]


def test_litellm_counts_non_openai_models(counter: TokenCounter) -> None:
    from gateway.usage.tokens import LiteLLMTokenizer

    catalog = catalog_of(
        {"aliases": {"claude": {"deployments": [{"provider": "anthropic", "model": "claude-3-5-haiku-20241022",
                                                 "input_cost_per_token": 1e-6, "output_cost_per_token": 5e-6}]}}},
        {"teams": {}},
    )
    tokenizer = counter.for_deployment(catalog.aliases["claude"].deployments[0], strict=True)
    assert isinstance(tokenizer, LiteLLMTokenizer)
    short = tokenizer.count_messages([{"role": "user", "content": "Hi"}])
    longer = tokenizer.count_messages([{"role": "user", "content": "Hi " * 50}])
    assert 0 < short < longer


async def test_gateway_refuses_to_start_without_its_encodings(tmp_path: Path, fake: FakeHandle) -> None:
    (tmp_path / "empty-encodings").mkdir()
    proc = make_gateway(
        tmp_path, fake.url, f"sqlite:///{tmp_path / 'gateway.db'}",
        extra={"tokens": {"encodings_dir": str(tmp_path / "empty-encodings")}},
    )
    with pytest.raises(RuntimeError) as caught:
        proc.start(timeout=30)
    assert "tiktoken encoding 'o200k_base' is missing" in str(caught.value)
    assert str(encoding_file(tmp_path / "empty-encodings", "o200k_base")) in str(caught.value)  # the file named


async def test_nothing_is_built_until_a_count_needs_it() -> None:
    counter = TokenCounter()
    catalog = catalog_of(priced_models(), {"teams": {}})
    counter.verify(catalog)  # every file checked...
    assert counter.encodings == set() and counter.building == set()  # ...nothing built
    mini, gpt4 = catalog.aliases["priced-pair"].deployments
    assert counter.built(mini) is None
    tokenizer = await counter.tokenizer(mini)
    # The compact encoding only (not even the fallback's), not tiktoken's 40-50 MiB.
    assert counter.compact_encodings == {"o200k_base"} and counter.encodings == set()
    assert counter.built(mini) is tokenizer and counter.built(gpt4) is None
    assert isinstance(tokenizer, TiktokenTokenizer) and not tokenizer.fast
    assert tokenizer.count_messages(COOKBOOK) == 124
    # A large text to count: tiktoken's encoder is built for it, and takes over the same tokenizer.
    assert await counter.tokenizer(mini, fast=True) is tokenizer and tokenizer.fast
    assert counter.encodings == {"o200k_base"} and tokenizer.count_messages(COOKBOOK) == 124
    # The Python copy of the ranks is gone; tiktoken's Rust core, which counts, has its own.
    assert tokenizer.encoding is not None and tokenizer.encoding._mergeable_ranks is None
    assert tokenizer.encoding.decode(tokenizer.encoding.encode_ordinary("hello world")) == "hello world"
    gpt4o = catalog_of({"aliases": {"big": {"deployments": [{**priced_models()["aliases"]["priced"]["deployments"][0],
                                                              "model": "gpt-4o"}]}}}, {"teams": {}})
    assert await counter.tokenizer(gpt4o.aliases["big"].deployments[0]) is tokenizer  # one per encoding


async def _runtime(root: Path, teams: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> Runtime:
    config = GatewayConfig(root=root, upstream="http://127.0.0.1:9", database_url=f"sqlite:///{root / 'g.db'}",
                           teams=teams).write()
    monkeypatch.setenv("GATEWAY_ADMIN_KEY", ADMIN_KEY)
    monkeypatch.setenv("TEST_PROVIDER_KEY", PROVIDER_KEY)
    return await create_runtime(load_settings(config))


async def _built(counter: TokenCounter) -> frozenset[str]:
    for _ in range(500):
        if not counter.building:
            break
        await asyncio.sleep(0.02)
    return counter.encodings


async def test_no_tokenizer_is_built_at_start_up_or_on_a_policy_change(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Budgets reserve with a byte bound (``gateway.budgets.stage``): a tokenizer (25-45 MiB,
    ~0.5 s) is built only for a request the bound does not fit, or an answer without usage."""
    teams = {"teams": {
        "alpha": {"models": ["fake-embed", "mock"], "budget": {"limit_usd": 5.0, "period": "daily"}},
        "beta": {"models": ["*"]},
    }}
    runtime = await _runtime(tmp_path, teams, monkeypatch)
    try:
        assert isinstance(runtime.budget, Budget) and isinstance(runtime.usage, MeterUsage)
        counter = runtime.usage.tokens
        await asyncio.sleep(0.2)  # anything started in the background would show by now
        assert counter.building == set() and counter.encodings == set()
        everyone = {"teams": {"alpha": {"models": ["*"], "budget": {"limit_usd": 5.0, "period": "daily"}}}}
        runtime.use_catalog(catalog_of(default_models("http://127.0.0.1:9"), everyone))
        await asyncio.sleep(0.2)
        assert counter.building == set() and counter.encodings == set()
    finally:
        await runtime.close()


_TEXT = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=300)
_PART = st.one_of(
    st.builds(lambda text: {"type": "text", "text": text}, _TEXT),
    st.just({"type": "image_url", "image_url": {"url": "https://x/y.png"}}),
    st.builds(lambda text: {"type": "input_audio", "input_audio": {"data": text, "format": "wav"}}, _TEXT),
)
_MESSAGE = st.fixed_dictionaries(
    {"role": st.sampled_from(["system", "user", "assistant", "tool"]),
     "content": st.one_of(st.none(), _TEXT, st.lists(_PART, max_size=4))},
    optional={
        "name": _TEXT,
        "tool_calls": st.lists(st.fixed_dictionaries({
            "id": _TEXT, "type": st.just("function"),
            "function": st.fixed_dictionaries({"name": _TEXT, "arguments": _TEXT})}), max_size=3),
    },
)
_TOOLS = st.one_of(st.none(), st.lists(st.fixed_dictionaries({
    "type": st.just("function"),
    "function": st.fixed_dictionaries({"name": _TEXT, "description": _TEXT})}), max_size=2))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(messages=st.lists(_MESSAGE, max_size=6), tools=_TOOLS)
def test_the_byte_bound_is_never_below_the_exact_count(
    counter: TokenCounter, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None
) -> None:
    """A budget reserves with ``ByteBound`` and trusts it never to reserve too little."""
    bound = ByteBound().count_messages(messages, tools)
    for name in ("o200k_base", "cl100k_base"):
        assert bound >= TiktokenTokenizer(counter.encoding(name)).count_messages(messages, tools)
