"""The OpenAI schema fixture: faithful to the shared spec, self-contained, and usable as a validator."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest

from support.openai_schema import (
    convert_nullable,
    load_schemas,
    validate_response,
    validate_stream_chunk,
)

SPEC = Path(__file__).resolve().parents[1].parent / "shared" / "openai" / "openapi.json"
REGENERATE = "regenerate it with: python tests/fixtures/extract_openai_schemas.py"


@pytest.fixture(scope="module")
def spec() -> dict:
    if not SPEC.exists():
        pytest.skip(f"{SPEC} is absent (only the shared workspace has it); the fixture is used as stored")
    return json.loads(SPEC.read_text(encoding="utf-8"))


def fixture_schemas() -> dict:
    return load_schemas()["components"]["schemas"]


# --- the fixture against the spec ---------------------------------------------------------------


def test_fixture_schemas_equal_the_spec(spec: dict) -> None:
    spec_schemas = spec["components"]["schemas"]
    differing = [name for name, schema in fixture_schemas().items() if spec_schemas.get(name) != schema]
    assert not differing, f"fixture schemas differ from {SPEC}: {differing}; {REGENERATE}"


def test_fixture_header_matches_the_spec(spec: dict) -> None:
    header = load_schemas()["header"]
    assert header["source"] == "shared/openai/openapi.json"
    assert header["openapi"] == spec["openapi"], REGENERATE
    assert header["info_version"] == spec["info"]["version"], REGENERATE


def test_fixture_is_self_contained() -> None:
    schemas = fixture_schemas()
    text = json.dumps(schemas)
    refs = set(re.findall(r'"\$ref": "([^"]+)"', text))
    assert refs, "expected the fixture to use $ref"
    missing = {ref for ref in refs if ref.removeprefix("#/components/schemas/") not in schemas}
    assert not missing, f"$refs that do not resolve inside the fixture: {missing}; {REGENERATE}"
    assert set(load_schemas()["header"]["roots"]) <= schemas.keys()


# --- nullable conversion -------------------------------------------------------------------------


def test_convert_nullable_wraps_types_enums_and_refs_everywhere() -> None:
    schema = {
        "type": "object",
        "properties": {
            "reason": {"type": "string", "enum": ["stop"], "nullable": True},
            "usage": {"$ref": "#/components/schemas/CompletionUsage", "nullable": True},
            "either": {"type": ["string", "integer"], "nullable": True},
            "list": {"type": "array", "items": {"type": "integer", "nullable": True}},
            "all": {"allOf": [{"$ref": "#/x"}, {"nullable": True}]},
            "plain": {"type": "string", "nullable": False},
        },
    }
    props = convert_nullable(schema)["properties"]
    null = {"type": "null"}
    assert props["reason"] == {"anyOf": [{"type": "string", "enum": ["stop"]}, null]}
    assert props["usage"] == {"anyOf": [{"$ref": "#/components/schemas/CompletionUsage"}, null]}
    assert props["either"] == {"anyOf": [{"type": ["string", "integer"]}, null]}
    assert props["list"]["items"] == {"anyOf": [{"type": "integer"}, null]}
    assert props["all"] == {"allOf": [{"$ref": "#/x"}, {"anyOf": [{}, null]}]}
    assert props["plain"] == {"type": "string"}
    assert schema["properties"]["reason"]["nullable"] is True, "the input must not be modified"


def test_convert_nullable_leaves_data_alone() -> None:
    schema = {
        "type": "object",
        "properties": {"nullable": {"type": "boolean"}},
        "default": {"nullable": True},
        "enum": [{"nullable": True}],
        "x-meta": {"nullable": True},
    }
    assert convert_nullable(schema) == schema


# --- realistic responses validate ----------------------------------------------------------------

USAGE = {
    "prompt_tokens": 19,
    "completion_tokens": 10,
    "total_tokens": 29,
    "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
    "completion_tokens_details": {
        "reasoning_tokens": 0,
        "audio_tokens": 0,
        "accepted_prediction_tokens": 0,
        "rejected_prediction_tokens": 0,
    },
}

CHAT_COMPLETION = {
    "id": "chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT",
    "object": "chat.completion",
    "created": 1741569952,
    "model": "gpt-4.1-2025-04-14",
    "choices": [
        {
            "index": 0,
            "message": {
                "role": "assistant",
                "content": "Hello! How can I assist you today?",
                "refusal": None,
                "annotations": [],
            },
            "logprobs": None,
            "finish_reason": "stop",
        }
    ],
    "usage": USAGE,
    "service_tier": "default",
    "system_fingerprint": "fp_44709d6fcb",
}

CHUNK_BASE = {
    "id": "chatcmpl-123",
    "object": "chat.completion.chunk",
    "created": 1694268190,
    "model": "gpt-4o-mini",
    "system_fingerprint": "fp_44709d6fcb",
    "service_tier": "default",
}

STREAM = [
    {
        **CHUNK_BASE,
        "choices": [
            {
                "index": 0,
                "delta": {"role": "assistant", "content": "", "refusal": None},
                "logprobs": None,
                "finish_reason": None,
            }
        ],
        "usage": None,
    },
    {
        **CHUNK_BASE,
        "choices": [{"index": 0, "delta": {"content": "Hello"}, "logprobs": None, "finish_reason": None}],
        "usage": None,
        "obfuscation": "Xq9",
    },
    {**CHUNK_BASE, "choices": [{"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}]},
    {**CHUNK_BASE, "choices": [], "usage": USAGE},
]

EMBEDDINGS = {
    "object": "list",
    "data": [{"object": "embedding", "index": 0, "embedding": [0.0023064255, -0.009327292, 0]}],
    "model": "text-embedding-3-small",
    "usage": {"prompt_tokens": 8, "total_tokens": 8},
}

MODELS = {
    "object": "list",
    "data": [
        {"id": "gpt-4o-mini", "object": "model", "created": 1721172741, "owned_by": "system"},
        {"id": "team-a/summarize", "object": "model", "created": 0, "owned_by": "gateway"},
    ],
}

ERROR = {
    "error": {
        "message": "Incorrect API key provided.",
        "type": "invalid_request_error",
        "param": None,
        "code": "invalid_api_key",
    }
}


@pytest.mark.parametrize(
    ("schema_name", "instance"),
    [
        ("CreateChatCompletionResponse", CHAT_COMPLETION),
        ("CreateEmbeddingResponse", EMBEDDINGS),
        ("ListModelsResponse", MODELS),
        ("ErrorResponse", ERROR),
    ],
)
def test_realistic_responses_validate(schema_name: str, instance: dict) -> None:
    validate_response(schema_name, instance)


@pytest.mark.parametrize("chunk", STREAM, ids=["role", "content", "finish", "usage-only"])
def test_realistic_stream_chunks_validate(chunk: dict) -> None:
    validate_stream_chunk(chunk)


def test_tool_call_completion_validates() -> None:
    completion = copy.deepcopy(CHAT_COMPLETION)
    choice = completion["choices"][0]
    choice["finish_reason"] = "tool_calls"
    choice["message"]["content"] = None
    choice["message"]["tool_calls"] = [
        {"id": "call_abc", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}
    ]
    validate_response("CreateChatCompletionResponse", completion)


def test_only_the_required_fields_are_needed() -> None:
    """``usage``, ``service_tier``, ``system_fingerprint`` are optional; ``refusal``, ``logprobs`` are not."""
    minimal = {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1,
        "model": "m",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "hi", "refusal": None},
                "logprobs": None,
                "finish_reason": "length",
            }
        ],
    }
    validate_response("CreateChatCompletionResponse", minimal)
    chunk = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "m"}
    validate_stream_chunk(chunk | {"choices": [{"index": 0, "delta": {}, "finish_reason": None}]})


# --- invalid responses fail ----------------------------------------------------------------------


DELETE = object()


def _with(instance: dict, path: str, value: object) -> dict:
    """A deep copy of ``instance`` with the value at dotted ``path`` replaced (or deleted, for DELETE)."""
    changed = copy.deepcopy(instance)
    *parents, last = (int(part) if part.isdigit() else part for part in path.split("."))
    target = changed
    for key in parents:
        target = target[key]
    if value is DELETE:
        del target[last]
    else:
        target[last] = value
    return changed


CHAT, CHUNK = "CreateChatCompletionResponse", "CreateChatCompletionStreamResponse"
EMBED, MODEL_LIST = "CreateEmbeddingResponse", "ListModelsResponse"


@pytest.mark.parametrize(
    ("schema_name", "instance", "expected"),
    [
        (CHAT, _with(CHAT_COMPLETION, "choices", DELETE), "'choices' is a required property"),
        (CHAT, _with(CHAT_COMPLETION, "object", "chat.completion.chunk"), "$.object: 'chat.completion.chunk"),
        (CHAT, _with(CHAT_COMPLETION, "usage.total_tokens", "29"), "$.usage.total_tokens: '29' is not"),
        (CHAT, _with(CHAT_COMPLETION, "created", 17.5), "$.created: 17.5 is not of type 'integer'"),
        # Only streamed chunks may carry a null finish_reason.
        (CHAT, _with(CHAT_COMPLETION, "choices.0.finish_reason", None), "$.choices[0].finish_reason: None"),
        (CHAT, _with(CHAT_COMPLETION, "choices.0.message.refusal", DELETE), "'refusal' is a required"),
        (CHAT, _with(CHAT_COMPLETION, "choices.0.logprobs", DELETE), "'logprobs' is a required"),
        (CHUNK, _with(STREAM[0], "object", "chat.completion"), "$.object: 'chat.completion'"),
        (CHUNK, _with(STREAM[2], "choices.0.finish_reason", DELETE), "'finish_reason' is a required"),
        (CHUNK, _with(STREAM[3], "usage.prompt_tokens", "19"), "$.usage.prompt_tokens: '19' is not"),
        (EMBED, _with(EMBEDDINGS, "data.0.embedding.1", "-0.009"), "$.data[0].embedding[1]: '-0.009'"),
        (EMBED, _with(EMBEDDINGS, "usage", DELETE), "'usage' is a required property"),
        (MODEL_LIST, _with(MODELS, "data.0.created", "1721172741"), "$.data[0].created: '1721172741'"),
        (MODEL_LIST, _with(MODELS, "data.1.owned_by", DELETE), "'owned_by' is a required property"),
        ("ErrorResponse", _with(ERROR, "error.code", DELETE), "'code' is a required property"),
    ],
)
def test_invalid_responses_fail(schema_name: str, instance: dict, expected: str) -> None:
    with pytest.raises(AssertionError) as excinfo:
        validate_response(schema_name, instance)
    assert expected in str(excinfo.value)


def test_every_error_is_listed() -> None:
    broken = _with(_with(MODELS, "object", "models"), "data.0.id", 7)
    with pytest.raises(AssertionError, match=r"\(2 errors\)") as excinfo:
        validate_response("ListModelsResponse", broken)
    assert "$.object: 'models' is not one of ['list']" in str(excinfo.value)
    assert "$.data[0].id: 7 is not of type 'string'" in str(excinfo.value)


def test_unknown_schema_name_is_a_clear_error() -> None:
    with pytest.raises(KeyError, match="CreateResponse"):
        validate_response("CreateResponse", {})
