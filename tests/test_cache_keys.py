"""Cache keys, as properties: what changes the answer changes the key, and nothing else does.

The key is computed from the parsed body (as the gateway holds it), so the "same key" tests
start from raw JSON bytes with shuffled key order and random whitespace and parse them the
way the gateway does.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import random
from typing import Any

import orjson
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from gateway.cache.keys import (
    EXCLUDED_FIELDS,
    KEY_VERSION,
    PurgeFilter,
    canonical_body,
    encode_component,
    entry_key,
    is_deterministic,
    lock_key,
    parse_key,
    request_digest,
    team_scope,
)
from gateway.cache.policy import NO_DIRECTIVE, Directive, parse_cache_control

DEPLOYMENTS = [("openai", "gpt-4o-mini", "http://fake/v1"), ("openai", "gpt-4o", "http://fake/v1")]

# Parameters known to shape the answer, plus provider extras the gateway has never heard of:
# the key must cover both (an allow-list would miss the second kind).
OUTPUT_PARAMS = [
    "messages", "temperature", "top_p", "max_tokens", "max_completion_tokens", "stop", "seed", "tools",
    "tool_choice", "response_format", "n", "logprobs", "top_logprobs", "presence_penalty",
    "frequency_penalty", "logit_bias", "parallel_tool_calls", "reasoning_effort", "modalities", "audio",
    "prediction", "web_search_options", "verbosity", "functions", "function_call", "input", "dimensions",
    "encoding_format", "top_k", "repetition_penalty", "min_p", "safe_prompt", "thinking", "guided_json",
]

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4),
    max_leaves=12,
)
messages = st.lists(
    st.fixed_dictionaries(
        {"role": st.sampled_from(["system", "user", "assistant"]), "content": st.text(max_size=30)}
    ),
    min_size=1,
    max_size=4,
)


@st.composite
def chat_bodies(draw: st.DrawFn) -> dict[str, Any]:
    body: dict[str, Any] = {"model": "fake-chat", "messages": draw(messages)}
    for name in draw(st.lists(st.sampled_from(OUTPUT_PARAMS[1:]), max_size=5, unique=True)):
        body[name] = draw(json_values)
    return body


def digest(body: dict[str, Any], *, deployments: list[tuple[str, str, str]] = DEPLOYMENTS,
           prompt: str | None = None, version: int | None = None, endpoint: str = "chat") -> str:
    return request_digest(endpoint, deployments, prompt, version, body)


def shuffled(value: Any, rng: random.Random) -> Any:
    if isinstance(value, dict):
        items = list(value.items())
        rng.shuffle(items)
        return {key: shuffled(item, rng) for key, item in items}
    if isinstance(value, list):
        return [shuffled(item, rng) for item in value]
    return value


def reformatted(body: dict[str, Any], rng: random.Random) -> bytes:
    """The same JSON object with other key order and whitespace, parsed as the gateway parses."""
    indent = rng.choice([None, 0, 1, 2, 4, "\t"])
    separators = rng.choice([(",", ":"), (", ", ": "), (" ,  ", " :\n ")])
    text = json.dumps(shuffled(body, rng), indent=indent, separators=separators, ensure_ascii=rng.random() < 0.5)
    return orjson.loads(("\n  " if rng.random() < 0.5 else "") + text + " \n")  # type: ignore[no-any-return]


# -- different answers, different keys --------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(body=chat_bodies(), name=st.sampled_from(OUTPUT_PARAMS), first=json_values, second=json_values)
def test_any_output_affecting_difference_changes_the_key(
    body: dict[str, Any], name: str, first: Any, second: Any
) -> None:
    assume(first != second or type(first) is not type(second))
    one = {**body, name: first}
    other = {**body, name: second}
    assume(orjson.dumps(one, option=orjson.OPT_SORT_KEYS) != orjson.dumps(other, option=orjson.OPT_SORT_KEYS))
    assert digest(one) != digest(other)


@settings(max_examples=200, deadline=None)
@given(body=chat_bodies(), name=st.sampled_from(OUTPUT_PARAMS[1:]), value=json_values)
def test_adding_a_parameter_changes_the_key(body: dict[str, Any], name: str, value: Any) -> None:
    body.pop(name, None)
    assert digest(body) != digest({**body, name: value})


@settings(max_examples=100, deadline=None)
@given(body=chat_bodies(), version=st.integers(min_value=1, max_value=10_000))
def test_deployments_prompt_version_and_endpoint_are_part_of_the_key(body: dict[str, Any], version: int) -> None:
    keys = {
        digest(body),
        digest(body, deployments=DEPLOYMENTS[:1]),
        digest(body, deployments=[("openai", "gpt-4o-mini", "http://other/v1")]),
        digest(body, deployments=[("anthropic", "gpt-4o-mini", "http://fake/v1")]),
        digest(body, prompt="greeting", version=version),
        digest(body, prompt="greeting", version=version + 1),
        digest(body, prompt="farewell", version=version),
        digest(body, endpoint="embeddings"),
    }
    assert len(keys) == 8


# -- same answer, same key --------------------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(body=chat_bodies(), seed=st.integers(min_value=0, max_value=2**32))
def test_key_order_and_whitespace_never_change_the_key(body: dict[str, Any], seed: int) -> None:
    rng = random.Random(seed)
    assert digest(reformatted(body, rng)) == digest(body)  # type: ignore[arg-type]


@settings(max_examples=150, deadline=None)
@given(
    body=chat_bodies(),
    user=json_values,
    stream=st.booleans(),
    include_usage=st.booleans(),
    metadata=st.dictionaries(st.text(max_size=8), st.text(max_size=8), max_size=3),
    store=st.booleans(),
    seed=st.integers(min_value=0, max_value=2**32),
)
def test_user_stream_metadata_and_transport_fields_never_change_the_key(
    body: dict[str, Any], user: Any, stream: bool, include_usage: bool, metadata: dict[str, str],
    store: bool, seed: int,
) -> None:
    decorated = {
        **body,
        "user": user,
        "stream": stream,
        "stream_options": {"include_usage": include_usage},
        "metadata": metadata,
        "store": store,
        "model": "some-other-spelling",  # the resolved alias and deployments are keyed instead
    }
    assert digest(reformatted(decorated, random.Random(seed))) == digest(body)  # type: ignore[arg-type]


@settings(max_examples=50, deadline=None)
@given(body=chat_bodies(), order=st.permutations(DEPLOYMENTS))
def test_deployment_order_does_not_change_the_key(body: dict[str, Any], order: list[tuple[str, str, str]]) -> None:
    # Routing draws the order per request; the set of models that may answer is what counts.
    assert digest(body, deployments=order) == digest(body)


def test_excluded_fields_are_only_transport_and_bookkeeping() -> None:
    # A guard against someone "optimising" the key by excluding a parameter that matters.
    assert not EXCLUDED_FIELDS & set(OUTPUT_PARAMS)


@settings(max_examples=200, deadline=None)
@given(
    body=chat_bodies(),
    prompt=st.none() | st.text(max_size=12),
    version=st.none() | st.integers(min_value=1, max_value=10**6),
)
def test_the_memoised_prefix_hashes_the_same_bytes_as_the_whole_request(
    body: dict[str, Any], prompt: str | None, version: int | None
) -> None:
    # The stage reuses the serialised prefix per deployment set; keys written before that
    # (and by replicas on older code) must stay the same keys.
    whole = orjson.dumps(
        [KEY_VERSION, "chat", sorted(set(DEPLOYMENTS)), prompt, version, canonical_body(body)],
        option=orjson.OPT_SORT_KEYS,
    )
    assert digest(body, prompt=prompt, version=version) == hashlib.blake2b(whole, digest_size=16).hexdigest()


def test_digest_is_short_and_fixed_size() -> None:
    huge = {"messages": [{"role": "user", "content": "x" * 100_000}]}
    assert len(digest(huge)) == len(digest({"messages": []})) == 32


# -- readable key parts -----------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(
    team=st.text(min_size=1, max_size=20),
    alias=st.text(min_size=1, max_size=20),
    prompt=st.none() | st.text(min_size=1, max_size=20),
    version=st.none() | st.integers(min_value=1, max_value=10**6),
)
def test_key_parts_survive_any_names(team: str, alias: str, prompt: str | None, version: int | None) -> None:
    key = entry_key(team_scope(team), alias, prompt, version, "0" * 32)
    parts = parse_key(key)
    assert parts is not None
    assert parts.scope == team_scope(team)
    assert parts.alias == encode_component(alias)
    assert PurgeFilter(scopes=(team_scope(team),), alias=alias, prompt=prompt, version=version).matches(parts)
    assert not PurgeFilter(scopes=(team_scope(team + "x"),)).matches(parts)
    # The SCAN pattern (Redis glob, which fnmatch models for these characters) finds the key.
    selection = PurgeFilter(scopes=(team_scope(team),), alias=alias, prompt=prompt, version=version)
    assert any(fnmatch.fnmatchcase(key, pattern) for pattern in selection.patterns())
    assert lock_key(key).startswith("gwl:") and parse_key(lock_key(key)) is None


def test_encoded_parts_cannot_inject_glob_or_separator() -> None:
    for name in ["a:b", "a*", "a?", "[ab]", "a\\b", "über", "a b"]:
        encoded = encode_component(name)
        assert not set(encoded) & set(":*?[]\\ ")
    assert encode_component("team-1.prod_x") == "team-1.prod_x"


# -- determinism and Cache-Control ------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({}, False),  # OpenAI's default temperature is 1
        ({"temperature": None}, False),
        ({"temperature": 0}, True),
        ({"temperature": 0.0}, True),
        ({"temperature": 0.7}, False),
        ({"temperature": 0.7, "seed": 42}, True),
        ({"seed": 0}, True),
        ({"seed": None}, False),
        ({"temperature": False}, False),
    ],
)
def test_deterministic_requests(body: dict[str, Any], expected: bool) -> None:
    assert is_deterministic("chat", body) is expected
    assert is_deterministic("embeddings", body) is True


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("", NO_DIRECTIVE),
        ("no-cache", Directive(no_cache=True)),
        ("No-Store", Directive(no_store=True)),
        ("max-age=30", Directive(max_age=30.0)),
        ("max-age=0", Directive(max_age=0.0)),
        ("max-age=60, no-cache", Directive(no_cache=True, max_age=60.0)),
        ('max-age="5"', Directive(max_age=5.0)),
        ("max-age=-1", NO_DIRECTIVE),
        ("max-age=soon", NO_DIRECTIVE),
        ("private, must-revalidate", NO_DIRECTIVE),
    ],
)
def test_cache_control(header: str, expected: Directive) -> None:
    assert parse_cache_control(header) == expected
