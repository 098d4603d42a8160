"""Deterministic OpenAI wire-format answers, with no I/O.

The gateway's in-process ``mock`` provider and the fake upstream server both build their answers
here, so a test that talks to either sees byte-for-byte the same model behaviour. Everything is a
pure function of the request body (plus ``created``), which is what makes cache, retry and
evaluation tests reproducible: the same body always yields the same id, content and usage.

The answer echoes the last user message (``"Mock answer: <text>"``) because evaluation suites
assert ``contains`` on model output, and an echo lets them control the expected text from the
prompt alone.
"""

from __future__ import annotations

import base64
import hashlib
import math
import re
import struct
import time
from collections.abc import Mapping
from typing import Any, Final

import orjson

__all__ = [
    "SSE_DONE",
    "chat_completion",
    "chat_stream_chunks",
    "count_tokens",
    "embeddings",
    "prompt_tokens",
    "sse_event",
]

SSE_DONE: Final = b"data: [DONE]\n\n"
SYSTEM_FINGERPRINT: Final = "fp_mock"
DEFAULT_MODEL: Final = "mock"
DEFAULT_EMBEDDING_DIMENSIONS: Final = 16
ANSWER_PREFIX: Final = "Mock answer"
ECHO_CHARS: Final = 200

# A "token" is a run of word characters or one punctuation mark. The piece pattern also swallows the
# whitespace in front of a token (or trailing whitespace), so the pieces of a string concatenate
# back to exactly that string: truncation, logprobs and stream deltas all cut on the same
# boundaries and can never disagree with ``count_tokens``.
_TOKEN_RE: Final = re.compile(r"\w+|[^\w\s]")
_PIECE_RE: Final = re.compile(r"\s*(?:\w+|[^\w\s])|\s+")
_MAX_SCHEMA_DEPTH: Final = 12
#: The most one answer builds from JSON schemas (tool arguments, structured output), over all its
#: choices: characters of strings, and values (properties and array items). A schema asking for
#: more (``"minLength": 10**12``, nested ``minItems`` multiplying past it) is refused as an
#: upstream refuses a request it cannot serve (ValueError here, a 400 from the ``mock``
#: provider), instead of building gigabytes in the gateway's own process.
MAX_SCHEMA_CHARS: Final = 1 << 20
MAX_SCHEMA_VALUES: Final = 100_000

JSON = dict[str, Any]


# ---------------------------------------------------------------------------------------------
# Token heuristics
# ---------------------------------------------------------------------------------------------


def count_tokens(text: str) -> int:
    """Approximate a BPE token count without a tokenizer.

    Budgets, usage and cost tests need a stable number, not an exact one, and loading tiktoken on
    a benchmark hot path would cost more than the whole fake answer.
    """
    if not text:
        return 0
    return max(1, len(_TOKEN_RE.findall(text)))


def text_pieces(text: str) -> list[str]:
    return _PIECE_RE.findall(text)


def _content_text(content: Any) -> str:
    """Flatten OpenAI content parts and Anthropic content blocks, which both carry ``text``."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list | tuple):
        texts: list[str] = []
        for part in content:
            if isinstance(part, str):
                texts.append(part)
            elif isinstance(part, dict):
                text = part.get("text")
                if isinstance(text, str):
                    texts.append(text)
                elif part.get("type") == "tool_result":
                    texts.append(_content_text(part.get("content")))
        return " ".join(t for t in texts if t)
    return ""


def dumps_str(value: Any) -> str:
    return orjson.dumps(value, default=str).decode()


def prompt_tokens(body: Mapping[str, Any]) -> int:
    """Count prompt tokens the way a provider bills them: messages, system prompt and tool schemas.

    Accepts both OpenAI chat bodies and Anthropic Messages bodies (top-level ``system``), so the two
    wire formats report the same usage for the same conversation.
    """
    total = count_tokens(_content_text(body.get("system")))
    messages = body.get("messages")
    if isinstance(messages, list | tuple):
        for message in messages:
            if not isinstance(message, dict):
                continue
            total += count_tokens(_content_text(message.get("content")))
            tool_calls = message.get("tool_calls")
            if isinstance(tool_calls, list | tuple):
                for call in tool_calls:
                    function = call.get("function") if isinstance(call, dict) else None
                    if isinstance(function, dict):
                        total += count_tokens(str(function.get("name") or ""))
                        total += count_tokens(str(function.get("arguments") or ""))
    tools = body.get("tools")
    if tools:
        total += count_tokens(dumps_str(tools))
    return total


# ---------------------------------------------------------------------------------------------
# Shared helpers
# ---------------------------------------------------------------------------------------------


def digest(value: Any, *, size: int = 12) -> str:
    raw = orjson.dumps(value, option=orjson.OPT_SORT_KEYS, default=str)
    return hashlib.blake2b(raw, digest_size=size).hexdigest()


def request_identity(body: Mapping[str, Any]) -> dict[str, Any]:
    """Drop transport-only fields so a streamed and a non-streamed request share one id."""
    return {k: v for k, v in body.items() if k not in ("stream", "stream_options")}


def last_user_text(messages: Any) -> str:
    if not isinstance(messages, list | tuple) or not messages:
        return ""
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            return _content_text(message.get("content"))
    last = messages[-1]
    return _content_text(last.get("content")) if isinstance(last, dict) else ""


def answer_text(messages: Any, index: int = 0) -> str:
    """The echo answer; choices after the first get a numbered prefix so ``n`` > 1 differ."""
    echo = last_user_text(messages).strip()[:ECHO_CHARS]
    prefix = ANSWER_PREFIX if index == 0 else f"{ANSWER_PREFIX} #{index + 1}"
    return f"{prefix}: {echo}" if echo else f"{prefix}."


def stop_sequences(stop: Any) -> list[str]:
    if isinstance(stop, str):
        return [stop] if stop else []
    if isinstance(stop, list | tuple):
        return [s for s in stop if isinstance(s, str) and s]
    return []


def apply_stop(text: str, stops: list[str]) -> tuple[str, str | None]:
    """Cut at the earliest stop sequence, returning the sequence that matched (or None)."""
    best: tuple[int, str] | None = None
    for seq in stops:
        pos = text.find(seq)
        if pos != -1 and (best is None or pos < best[0]):
            best = (pos, seq)
    if best is None:
        return text, None
    return text[: best[0]], best[1]


def apply_max_tokens(text: str, limit: Any) -> tuple[str, bool]:
    if not isinstance(limit, int) or isinstance(limit, bool) or limit < 0:
        return text, False
    if count_tokens(text) <= limit:
        return text, False
    return "".join(text_pieces(text)[:limit]), True


# ---------------------------------------------------------------------------------------------
# JSON Schema instances (tool arguments, structured outputs)
# ---------------------------------------------------------------------------------------------


def _resolve_ref(ref: str, root: Mapping[str, Any]) -> Mapping[str, Any]:
    if not ref.startswith("#/"):
        return {}
    node: Any = root
    for part in ref[2:].split("/"):
        if not isinstance(node, dict):
            return {}
        node = node.get(part.replace("~1", "/").replace("~0", "~"))
    return node if isinstance(node, dict) else {}


class SchemaBudget:
    """What is left of an answer's MAX_SCHEMA_CHARS and MAX_SCHEMA_VALUES; spent before building."""

    def __init__(self) -> None:
        self.chars = MAX_SCHEMA_CHARS
        self.values = MAX_SCHEMA_VALUES

    def check_room(self, *, chars: int = 0, values: int = 0) -> None:
        """ValueError unless ``chars`` and ``values`` more would fit (nothing is spent)."""
        if chars > self.chars or values > self.values:
            self.spend(chars=chars, values=values)

    def spend(self, *, chars: int = 0, values: int = 0) -> None:
        self.chars -= chars
        self.values -= values
        if self.chars < 0 or self.values < 0:
            raise ValueError(
                f"The JSON schema asks for more than the mock model writes in one answer ({MAX_SCHEMA_CHARS:,} "
                f"characters, {MAX_SCHEMA_VALUES:,} values): lower its minLength or minItems."
            )


def _string_value(schema: Mapping[str, Any], filler: str, budget: SchemaBudget) -> str:
    fmt = schema.get("format")
    by_format = {
        "date-time": "2024-01-01T00:00:00Z",
        "date": "2024-01-01",
        "time": "00:00:00",
        "email": "mock@example.com",
        "uri": "https://example.com/mock",
        "url": "https://example.com/mock",
        "uuid": "00000000-0000-4000-8000-000000000000",
        "ipv4": "127.0.0.1",
    }
    value = by_format.get(fmt, filler) if isinstance(fmt, str) else filler
    min_len = schema.get("minLength")
    max_len = schema.get("maxLength")
    length = max(len(value), min_len) if isinstance(min_len, int) else len(value)
    if isinstance(max_len, int):
        length = max(min(length, max_len), 0)
    budget.spend(chars=length)
    if length > len(value):
        value = value + "x" * (length - len(value))
    return value[:length]


def _bound(schema: Mapping[str, Any], key: str) -> float | None:
    value = schema.get(key)
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _number_value(schema: Mapping[str, Any], *, integer: bool) -> int | float:
    """1 when allowed, otherwise the nearest value inside the (exclusive) bounds."""
    minimum, maximum = _bound(schema, "minimum"), _bound(schema, "maximum")
    ex_min, ex_max = _bound(schema, "exclusiveMinimum"), _bound(schema, "exclusiveMaximum")
    if integer:
        value = 1
        if minimum is not None:
            value = max(value, math.ceil(minimum))
        if ex_min is not None:
            value = max(value, math.floor(ex_min) + 1)
        if maximum is not None:
            value = min(value, math.floor(maximum))
        if ex_max is not None:
            value = min(value, math.ceil(ex_max) - 1)
        return value
    number = 1.0
    if minimum is not None:
        number = max(number, minimum)
    if ex_min is not None and number <= ex_min:
        number = ex_min + 1
    if maximum is not None:
        number = min(number, maximum)
    if ex_max is not None and number >= ex_max:
        lower = max((b for b in (minimum, ex_min) if b is not None), default=ex_max - 2)
        number = (lower + ex_max) / 2
    return number


def _schema_instance(
    schema: Any, root: Mapping[str, Any], filler: str, budget: SchemaBudget, depth: int = 0
) -> Any:
    """Build a value valid for a simple JSON Schema.

    Covers what tool definitions and ``json_schema`` response formats use in practice (objects,
    scalars, arrays, enums, const, refs, unions); it is not a general schema solver.
    """
    if not isinstance(schema, dict) or depth > _MAX_SCHEMA_DEPTH:
        return filler if depth <= _MAX_SCHEMA_DEPTH else None
    if "$ref" in schema and isinstance(schema["$ref"], str):
        return _schema_instance(_resolve_ref(schema["$ref"], root), root, filler, budget, depth + 1)
    if "const" in schema:
        return schema["const"]
    enum = schema.get("enum")
    if isinstance(enum, list | tuple) and enum:
        return enum[0]
    for key in ("anyOf", "oneOf"):
        options = schema.get(key)
        if isinstance(options, list | tuple) and options:
            non_null = [o for o in options if not (isinstance(o, dict) and o.get("type") == "null")]
            return _schema_instance((non_null or list(options))[0], root, filler, budget, depth + 1)
    all_of = schema.get("allOf")
    if isinstance(all_of, list | tuple) and all_of:
        merged: dict[str, Any] = {}
        for part in all_of:
            if isinstance(part, dict):
                part = _resolve_ref(part["$ref"], root) if isinstance(part.get("$ref"), str) else part
                for k, v in part.items():
                    if k == "properties" and isinstance(v, dict):
                        merged.setdefault("properties", {}).update(v)
                    elif k == "required" and isinstance(v, list | tuple):
                        merged.setdefault("required", []).extend(v)
                    else:
                        merged.setdefault(k, v)
        return _schema_instance(merged, root, filler, budget, depth + 1)

    kind = schema.get("type")
    if isinstance(kind, list | tuple):
        kinds = [k for k in kind if k != "null"]
        kind = kinds[0] if kinds else "null"
    if kind is None:
        if "properties" in schema:
            kind = "object"
        elif "items" in schema:
            kind = "array"
        else:
            kind = "string"

    if kind == "object":
        properties = schema.get("properties")
        properties = properties if isinstance(properties, dict) else {}
        required = schema.get("required")
        names = [n for n in required if n in properties] if isinstance(required, list | tuple) else list(properties)
        budget.spend(values=len(names))
        return {name: _schema_instance(properties[name], root, filler, budget, depth + 1) for name in names}
    if kind == "array":
        min_items = schema.get("minItems")
        max_items = schema.get("maxItems")
        count = min_items if isinstance(min_items, int) and min_items > 1 else 1
        if isinstance(max_items, int):
            count = min(count, max_items)
        items = schema.get("items")
        if isinstance(items, list | tuple):  # tuple form
            budget.spend(values=len(items))
            return [_schema_instance(item, root, filler, budget, depth + 1) for item in items]
        budget.spend(values=max(count, 0))
        if count <= 0:
            return []
        # Items of one schema cost alike: what the first cost, the rest are charged up front, so
        # nested minItems (1,000 at each of four levels) are refused after one item of each
        # level, not after building the budget's worth of values.
        chars, values = budget.chars, budget.values
        first = _schema_instance(items or {}, root, filler, budget, depth + 1)
        budget.check_room(chars=(chars - budget.chars) * (count - 1), values=(values - budget.values) * (count - 1))
        return [first, *(_schema_instance(items or {}, root, filler, budget, depth + 1) for _ in range(count - 1))]
    if kind == "integer":
        return _number_value(schema, integer=True)
    if kind == "number":
        return _number_value(schema, integer=False)
    if kind == "boolean":
        return True
    if kind == "null":
        return None
    return _string_value(schema, filler, budget)


# ---------------------------------------------------------------------------------------------
# OpenAI chat completions
# ---------------------------------------------------------------------------------------------


def _selected_tool(body: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The function the model "decides" to call, or None when the answer should be text."""
    tools = body.get("tools")
    if not isinstance(tools, list | tuple) or not tools:
        return None
    choice = body.get("tool_choice")
    if choice == "none":
        return None
    functions: list[dict[str, Any]] = [
        t["function"] for t in tools if isinstance(t, dict) and isinstance(t.get("function"), dict)
    ]
    if not functions:
        return None
    if isinstance(choice, dict):
        wanted = choice.get("function", {}).get("name") if isinstance(choice.get("function"), dict) else None
        wanted = wanted or choice.get("name")
        for function in functions:
            if function.get("name") == wanted:
                return function
    return functions[0]


def tool_arguments(parameters: Any, filler: str, budget: SchemaBudget | None = None) -> dict[str, Any]:
    """Arguments valid for a tool's ``parameters`` schema; ValueError past the ``budget``."""
    if not isinstance(parameters, dict):
        return {}
    value = _schema_instance(parameters, parameters, filler, budget or SchemaBudget())
    return value if isinstance(value, dict) else {}


def _structured_content(response_format: Any, answer: str, budget: SchemaBudget) -> str | None:
    """JSON content for ``response_format``; None means plain text.

    Structured content is never cut by ``max_tokens``/``stop``: tests of the gateway's schema
    validation must not fail because of a mock artefact.
    """
    if not isinstance(response_format, dict):
        return None
    kind = response_format.get("type")
    if kind == "json_object":
        return dumps_str({"answer": answer})
    if kind == "json_schema":
        spec = response_format.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        if not isinstance(schema, dict):
            return dumps_str({"answer": answer})
        return dumps_str(_schema_instance(schema, schema, answer, budget))
    return None


def _logprob_entry(token: str, top: int) -> JSON:
    seed = int.from_bytes(hashlib.blake2b(token.encode(), digest_size=4).digest(), "little")
    logprob = -round((seed % 1000) / 4000, 6)  # in (-0.25, 0]: the mock is always fairly sure
    alternatives: list[JSON] = [{"token": token, "logprob": logprob, "bytes": list(token.encode())}]
    for j in range(1, top):
        alt = f"{token.strip() or token}_{j}"
        alternatives.append({"token": alt, "logprob": round(logprob - 1.5 * j, 6), "bytes": list(alt.encode())})
    return {
        "token": token,
        "logprob": logprob,
        "bytes": list(token.encode()),
        "top_logprobs": alternatives[:top],
    }


def _logprobs(pieces: list[str], body: Mapping[str, Any]) -> JSON | None:
    if body.get("logprobs") is not True:
        return None
    top = body.get("top_logprobs")
    top = top if isinstance(top, int) and not isinstance(top, bool) and top > 0 else 0
    return {"content": [_logprob_entry(p, top) for p in pieces], "refusal": None}


def _build_choice(
    body: Mapping[str, Any], index: int, completion_id: str, budget: SchemaBudget
) -> tuple[JSON, int]:
    """One choice and its completion token count."""
    messages = body.get("messages")
    function = _selected_tool(body)
    if function is not None:
        name = str(function.get("name") or "tool")
        filler = last_user_text(messages).strip()[:100] or "mock"
        arguments = dumps_str(tool_arguments(function.get("parameters"), filler, budget))
        call_id = f"call_{hashlib.blake2b(f'{completion_id}:{index}'.encode(), digest_size=12).hexdigest()}"
        message: JSON = {
            "role": "assistant",
            "content": None,
            "refusal": None,
            "annotations": [],
            "tool_calls": [{"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}],
        }
        choice: JSON = {"index": index, "message": message, "logprobs": None, "finish_reason": "tool_calls"}
        return choice, count_tokens(name) + count_tokens(arguments)

    answer = answer_text(messages, index)
    finish = "stop"
    content = _structured_content(body.get("response_format"), answer, budget)
    if content is None:
        content, _ = apply_stop(answer, stop_sequences(body.get("stop")))
        limit = body.get("max_completion_tokens")
        if limit is None:
            limit = body.get("max_tokens")
        content, truncated = apply_max_tokens(content, limit)
        if truncated:
            finish = "length"
    message = {"role": "assistant", "content": content, "refusal": None, "annotations": []}
    choice = {
        "index": index,
        "message": message,
        "logprobs": _logprobs(text_pieces(content), body),
        "finish_reason": finish,
    }
    return choice, count_tokens(content)


def _choice_count(body: Mapping[str, Any]) -> int:
    n = body.get("n")
    return n if isinstance(n, int) and not isinstance(n, bool) and n > 0 else 1


def chat_completion(body: Mapping[str, Any], *, model: str | None = None, created: int | None = None) -> JSON:
    """A complete ``CreateChatCompletionResponse`` for an OpenAI chat request body; ValueError
    for a JSON schema asking for more than one answer writes (``SchemaBudget``)."""
    completion_id = "chatcmpl-" + digest(request_identity(body))
    choices: list[JSON] = []
    completion_tokens = 0
    budget = SchemaBudget()
    for index in range(_choice_count(body)):
        choice, tokens = _build_choice(body, index, completion_id, budget)
        choices.append(choice)
        completion_tokens += tokens
    prompt = prompt_tokens(body)
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": int(time.time()) if created is None else created,
        "model": model or str(body.get("model") or DEFAULT_MODEL),
        "system_fingerprint": SYSTEM_FINGERPRINT,
        "choices": choices,
        "usage": {
            "prompt_tokens": prompt,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt + completion_tokens,
        },
    }


def split_groups(pieces: list[str], groups: int) -> list[list[str]]:
    """Split pieces into at most ``groups`` contiguous, non-empty, near-equal runs."""
    if not pieces:
        return []
    groups = max(1, min(groups, len(pieces)))
    size, extra = divmod(len(pieces), groups)
    out: list[list[str]] = []
    start = 0
    for g in range(groups):
        end = start + size + (1 if g < extra else 0)
        out.append(pieces[start:end])
        start = end
    return out


def split_text(text: str, parts: int) -> list[str]:
    if not text:
        return []
    parts = max(1, min(parts, len(text)))
    size = -(-len(text) // parts)
    return [text[i : i + size] for i in range(0, len(text), size)]


def chat_stream_chunks(
    body: Mapping[str, Any],
    *,
    model: str | None = None,
    created: int | None = None,
    chunks: int = 8,
) -> list[JSON]:
    """The ``chat_completion`` answer as ``chat.completion.chunk`` objects, in send order.

    Built from the non-streamed answer so that both paths agree exactly (same id, content, usage):
    concatenating the content deltas of a choice reproduces its ``message.content``.
    Choices are streamed one after another, each chunk carrying a single choice, as OpenAI does.
    """
    full = chat_completion(body, model=model, created=created)
    options = body.get("stream_options")
    include_usage = isinstance(options, dict) and options.get("include_usage") is True
    wants_logprobs = body.get("logprobs") is True
    top = body.get("top_logprobs")
    top = top if isinstance(top, int) and not isinstance(top, bool) and top > 0 else 0

    def chunk(choice: JSON) -> JSON:
        out: JSON = {
            "id": full["id"],
            "object": "chat.completion.chunk",
            "created": full["created"],
            "model": full["model"],
            "system_fingerprint": SYSTEM_FINGERPRINT,
            "choices": [choice],
        }
        if include_usage:
            out["usage"] = None
        return out

    result: list[JSON] = []
    for choice in full["choices"]:
        index = choice["index"]
        message = choice["message"]
        tool_calls = message.get("tool_calls")
        if tool_calls:
            result.append(
                chunk(
                    {
                        "index": index,
                        "delta": {"role": "assistant", "content": None, "refusal": None},
                        "logprobs": None,
                        "finish_reason": None,
                    }
                )
            )
            for call_index, call in enumerate(tool_calls):
                fn = call["function"]
                result.append(
                    chunk(
                        {
                            "index": index,
                            "delta": {
                                "tool_calls": [
                                    {
                                        "index": call_index,
                                        "id": call["id"],
                                        "type": "function",
                                        "function": {"name": fn["name"], "arguments": ""},
                                    }
                                ]
                            },
                            "logprobs": None,
                            "finish_reason": None,
                        }
                    )
                )
                for part in split_text(fn["arguments"], chunks):
                    result.append(
                        chunk(
                            {
                                "index": index,
                                "delta": {"tool_calls": [{"index": call_index, "function": {"arguments": part}}]},
                                "logprobs": None,
                                "finish_reason": None,
                            }
                        )
                    )
        else:
            result.append(
                chunk(
                    {
                        "index": index,
                        "delta": {"role": "assistant", "content": "", "refusal": None},
                        "logprobs": None,
                        "finish_reason": None,
                    }
                )
            )
            for group in split_groups(text_pieces(message["content"] or ""), chunks):
                logprobs = (
                    {"content": [_logprob_entry(p, top) for p in group], "refusal": None} if wants_logprobs else None
                )
                result.append(
                    chunk(
                        {
                            "index": index,
                            "delta": {"content": "".join(group)},
                            "logprobs": logprobs,
                            "finish_reason": None,
                        }
                    )
                )
        result.append(chunk({"index": index, "delta": {}, "logprobs": None, "finish_reason": choice["finish_reason"]}))

    if include_usage:
        last = chunk({})
        last["choices"] = []
        last["usage"] = full["usage"]
        result.append(last)
    return result


def sse_event(chunk: Mapping[str, Any]) -> bytes:
    """One OpenAI server-sent event (``data:`` line only; OpenAI does not name its events)."""
    return b"data: " + orjson.dumps(chunk) + b"\n\n"


# ---------------------------------------------------------------------------------------------
# Embeddings
# ---------------------------------------------------------------------------------------------


def _embedding_inputs(raw: Any) -> list[str | list[int]]:
    if isinstance(raw, str):
        return [raw]
    if isinstance(raw, list | tuple) and raw:
        if all(isinstance(x, int) and not isinstance(x, bool) for x in raw):
            return [list(raw)]
        if all(isinstance(x, str) for x in raw):
            return list(raw)
        if all(
            isinstance(x, list | tuple) and all(isinstance(t, int) and not isinstance(t, bool) for t in x) for x in raw
        ):
            return [list(x) for x in raw]
    raise ValueError("'input' must be a non-empty string, array of strings, or array of token arrays")


def _unit_vector(item: str | list[int], dimensions: int) -> tuple[list[float], bytes]:
    """A float32-exact unit vector derived from a hash, plus its little-endian float32 bytes.

    Values are rounded through float32 first so the ``float`` and ``base64`` encodings decode to
    identical numbers, the way the real API behaves.
    """
    key = item.encode() if isinstance(item, str) else b"tokens:" + ",".join(map(str, item)).encode()
    raw = hashlib.shake_256(key).digest(4 * dimensions)
    ints = struct.unpack(f"<{dimensions}I", raw)
    values = [(v / 0xFFFFFFFF) * 2.0 - 1.0 for v in ints]
    norm = sum(v * v for v in values) ** 0.5 or 1.0
    packed = struct.pack(f"<{dimensions}f", *(v / norm for v in values))
    return list(struct.unpack(f"<{dimensions}f", packed)), packed


def _dimensions(body: Mapping[str, Any]) -> int:
    dimensions = body.get("dimensions")
    if dimensions is None:
        return DEFAULT_EMBEDDING_DIMENSIONS
    if not isinstance(dimensions, int) or isinstance(dimensions, bool) or dimensions < 1:
        raise ValueError("'dimensions' must be a positive integer")
    return dimensions


def embeddings_size_at_least(body: Mapping[str, Any]) -> int:
    """A lower bound on the bytes of ``embeddings(body)``'s answer, from the body alone: what a
    caller asks for (2,048 inputs of 65,536 dimensions is ~2.7 GB of JSON) can be refused before
    any vector is built. Each value takes at least 4 bytes (``0.0,``) as JSON, 5 in base64.
    ValueError for dimensions the real API would reject, as ``embeddings``."""
    raw = body.get("input")
    # An array of strings or of token arrays: a vector each; a string or one token array: one.
    items = len(raw) if isinstance(raw, list | tuple) and raw and not isinstance(raw[0], int) else 1
    return items * _dimensions(body) * (5 if body.get("encoding_format") == "base64" else 4)


def embeddings(body: Mapping[str, Any], *, model: str | None = None) -> JSON:
    """A ``CreateEmbeddingResponse``; raises ValueError for inputs the real API would reject."""
    items = _embedding_inputs(body.get("input"))
    dimensions = _dimensions(body)
    encoding = body.get("encoding_format") or "float"
    if encoding not in ("float", "base64"):
        raise ValueError("'encoding_format' must be 'float' or 'base64'")
    data: list[JSON] = []
    tokens = 0
    for index, item in enumerate(items):
        vector, packed = _unit_vector(item, dimensions)
        embedding: list[float] | str = vector if encoding == "float" else base64.b64encode(packed).decode()
        data.append({"object": "embedding", "index": index, "embedding": embedding})
        tokens += count_tokens(item) if isinstance(item, str) else len(item)
    return {
        "object": "list",
        "data": data,
        "model": model or str(body.get("model") or DEFAULT_MODEL),
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }
