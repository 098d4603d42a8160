"""Stage 3, parse: the OpenAI request body, validated only as far as the gateway needs.

The body is parsed once (orjson). Fields the gateway acts on are checked with messages
that name the field; every other field (tools, response_format, logprobs, provider
extras...) passes through untouched, so new OpenAI parameters work without a gateway
release. Full validation is the upstream's job and its 400s are passed on.
"""

from __future__ import annotations

from typing import Any

import orjson

from gateway.context import Endpoint, Reply, RequestContext
from gateway.errors import InvalidRequest
from gateway.pipeline_types import Handler

#: The request field in which callers send their own retrieval results (gateway.scoring.context).
SCORING_FIELD = "scoring_context"

# Integer fields and the range each may take: OpenAI's own bounds where its spec gives them
# (``n`` 1..128, ``top_logprobs`` 0..20); token limits up to 2**31 - 1, past any model's window
# and what providers store them in. An absurd value (``"n": 18446744073709551615``) is the
# caller's mistake, answered 400 here, not a worst case for the budget to refuse.
_INT_RANGES = {
    "n": (1, 128),
    "max_tokens": (1, 2**31 - 1),
    "max_completion_tokens": (1, 2**31 - 1),
    "top_logprobs": (0, 20),
}
_NUMBERS = ("temperature", "top_p", "presence_penalty", "frequency_penalty")

#: How deeply a body may nest objects and arrays. orjson parses 1,024 levels but serialises
#: only 254, so deeper bodies parsed and then failed later (a cache key, a ledger row) as 500s.
#: No OpenAI request needs more than a few dozen levels (a tool's JSON schema is the deepest).
MAX_DEPTH = 128


def _require(condition: bool, message: str, param: str) -> None:
    if not condition:
        raise InvalidRequest(message, param=param, code="invalid_value")


def _check_chat(body: dict[str, Any], ctx: RequestContext) -> None:
    messages = body.get("messages")
    if messages is None:
        # A prompt from the repository brings its own messages; a plain model needs some.
        _require(ctx.requested_model.startswith("prompt:"), "'messages' is required.", "messages")
    else:
        _require(isinstance(messages, list), "'messages' must be an array.", "messages")
        for index, message in enumerate(messages):
            _require(isinstance(message, dict), f"'messages[{index}]' must be an object.", f"messages[{index}]")
            role = message.get("role")
            _require(
                isinstance(role, str) and bool(role),
                f"'messages[{index}].role' must be a non-empty string.",
                f"messages[{index}].role",
            )
        _require(
            bool(messages) or ctx.requested_model.startswith("prompt:"),
            "'messages' must not be empty.",
            "messages",
        )
    stream = body.get("stream", False)
    _require(stream is None or isinstance(stream, bool), "'stream' must be a boolean.", "stream")
    ctx.stream = bool(stream)
    options = body.get("stream_options")
    if options is not None:
        _require(isinstance(options, dict), "'stream_options' must be an object.", "stream_options")
        include = options.get("include_usage", False)
        _require(isinstance(include, bool), "'stream_options.include_usage' must be a boolean.", "stream_options")
        ctx.include_usage = bool(include) and ctx.stream
    for name, (lowest, highest) in _INT_RANGES.items():
        value = body.get(name)
        if value is not None:
            _require(
                isinstance(value, int) and not isinstance(value, bool) and lowest <= value <= highest,
                f"'{name}' must be an integer from {lowest} to {highest}.",
                name,
            )
    for name in _NUMBERS:
        value = body.get(name)
        if value is not None:
            _require(
                isinstance(value, int | float) and not isinstance(value, bool),
                f"'{name}' must be a number.",
                name,
            )


#: Embedding sizes a request may ask for: OpenAI's spec says at least 1; no model has more than a
#: few thousand, and the bound keeps a caller from having a vector of absurd size built for it.
_MAX_DIMENSIONS = 65_536
#: Inputs one embeddings request may hold (each of OpenAI's array forms: ``maxItems`` 2048).
MAX_EMBEDDING_INPUTS = 2048


def _check_embeddings(body: dict[str, Any]) -> None:
    dimensions = body.get("dimensions")
    if dimensions is not None:
        _require(
            isinstance(dimensions, int) and not isinstance(dimensions, bool) and 1 <= dimensions <= _MAX_DIMENSIONS,
            f"'dimensions' must be an integer from 1 to {_MAX_DIMENSIONS}.",
            "dimensions",
        )
    value = body.get("input")
    _require(value is not None, "'input' is required.", "input")
    _require(
        (isinstance(value, str) and value != "") or (isinstance(value, list) and len(value) > 0),
        "'input' must be a non-empty string or a non-empty array.",
        "input",
    )
    encoding = body.get("encoding_format")
    _require(encoding is None or encoding in ("float", "base64"),
             "'encoding_format' must be 'float' or 'base64'.", "encoding_format")
    if isinstance(value, list):
        _require(len(value) <= MAX_EMBEDDING_INPUTS, f"'input' may hold at most {MAX_EMBEDDING_INPUTS} items.",
                 "input")
        # OpenAI's four forms: strings, token ids, or arrays of token ids (one form a request).
        # Like OpenAI, no string may be empty.
        first = value[0]
        if isinstance(first, str):
            ok = all(isinstance(item, str) and item != "" for item in value)
        elif isinstance(first, list):
            ok = all(isinstance(item, list) and item and all(_is_token(t) for t in item) for item in value)
        else:
            ok = all(_is_token(item) for item in value)
        _require(ok, "'input' must be a string, an array of strings, an array of token ids or an array "
                 "of arrays of token ids.", "input")


def _is_token(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**31


def _deeper_than(value: Any, limit: int) -> bool:
    """Whether ``value`` nests containers more than ``limit`` levels (iterative: no recursion)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > limit:
            return True
        if isinstance(node, dict):
            stack.extend((child, depth + 1) for child in node.values() if isinstance(child, dict | list))
        elif isinstance(node, list):
            stack.extend((child, depth + 1) for child in node if isinstance(child, dict | list))
    return False


def parse_body(ctx: RequestContext) -> None:
    try:
        body = orjson.loads(ctx.raw_body)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"The request body is not valid JSON: {exc.msg}.", code="invalid_json") from None
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.", code="invalid_json")
    raw = ctx.raw_body
    # Counting brackets is a C-speed scan; only a body with enough of them to be that deep
    # (rare: large tool schemas) pays for the walk.
    if raw.count(b"[") + raw.count(b"{") > MAX_DEPTH and _deeper_than(body, MAX_DEPTH):
        raise InvalidRequest(
            f"The request body nests objects and arrays more than {MAX_DEPTH} levels deep.", code="invalid_json"
        )
    model = body.get("model")
    if not isinstance(model, str) or not model.strip():
        raise InvalidRequest("'model' is required and must be a non-empty string.", param="model",
                             code="invalid_value")
    ctx.requested_model = model
    user = body.get("user")
    ctx.user = user[:200] if isinstance(user, str) else None
    if ctx.endpoint is Endpoint.CHAT:
        _check_chat(body, ctx)
        # The gateway's field, like ``variables``: what the answer is scored against, never sent
        # upstream (gateway.scoring.context, REQUEST_FIELD).
        if SCORING_FIELD in body:
            ctx.scoring_context = body.pop(SCORING_FIELD)
    else:
        _check_embeddings(body)
    ctx.body = body


class ParseRequest:
    async def __call__(self, ctx: RequestContext, call_next: Handler) -> Reply:
        parse_body(ctx)
        return await call_next(ctx)
