"""The parse stage in process: each rule's OpenAI-shaped error, the edges of every range, and
what a valid body leaves on the context (and in it: fields the gateway does not check pass
through untouched)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from gateway.catalog import Catalog, build_catalog
from gateway.config.policies import ModelsFile, PolicyBundle, TeamsFile
from gateway.context import Endpoint, JsonReply, Reply, RequestContext
from gateway.errors import InvalidRequest, error_body
from gateway.parse import MAX_DEPTH, ParseRequest, parse_body

CATALOG: Catalog = build_catalog(PolicyBundle(models=ModelsFile(), teams=TeamsFile()))
HELLO = [{"role": "user", "content": "hi"}]
EMBEDDING_FORMS = (
    "'input' must be a string, an array of strings, an array of token ids or an array of arrays of token ids."
)


def context(raw: bytes, endpoint: Endpoint = Endpoint.CHAT) -> RequestContext:
    return RequestContext(request_id="req-1", endpoint=endpoint, raw_body=raw, authorization=None, catalog=CATALOG)


def chat(**fields: Any) -> bytes:
    return orjson.dumps({"model": "m", "messages": HELLO, **fields})


def accept(raw: bytes, endpoint: Endpoint = Endpoint.CHAT) -> RequestContext:
    ctx = context(raw, endpoint)
    parse_body(ctx)
    return ctx


def reject(raw: bytes, endpoint: Endpoint = Endpoint.CHAT) -> dict[str, Any]:
    """The wire error the body is answered with; every parse rejection is a plain 400."""
    with pytest.raises(InvalidRequest) as caught:
        parse_body(context(raw, endpoint))
    assert type(caught.value) is InvalidRequest
    assert caught.value.status == 400
    error: dict[str, Any] = orjson.loads(error_body(caught.value))["error"]
    return error


def invalid_value(param: str, message: str) -> dict[str, Any]:
    return {"message": message, "type": "invalid_request_error", "param": param, "code": "invalid_value"}


def invalid_json(message: str) -> dict[str, Any]:
    return {"message": message, "type": "invalid_request_error", "param": None, "code": "invalid_json"}


# -- the body as a whole --------------------------------------------------------------------


@pytest.mark.parametrize("raw", [b"", b"{", b'{"model": "m",}', b"\xff\xfe", b"{'model': 'm'}"])
def test_a_body_that_is_not_json_is_invalid_json(raw: bytes) -> None:
    error = reject(raw)
    assert error["code"] == "invalid_json"
    assert error["param"] is None
    assert error["type"] == "invalid_request_error"
    assert error["message"].startswith("The request body is not valid JSON: ")
    assert error["message"].endswith(".")


@pytest.mark.parametrize("raw", [b"[]", b'["model"]', b'"model"', b"42", b"null", b"true"])
def test_a_body_that_is_not_an_object_is_invalid_json(raw: bytes) -> None:
    assert reject(raw) == invalid_json("The request body must be a JSON object.")


def nested(levels: int) -> Any:
    """``levels`` arrays, one inside the other."""
    value: Any = "leaf"
    for _ in range(levels):
        value = [value]
    return value


def test_max_depth_is_128() -> None:
    assert MAX_DEPTH == 128


def test_a_body_nested_exactly_max_depth_levels_is_accepted() -> None:
    # The body object is level 1, so MAX_DEPTH - 1 arrays inside it reach level MAX_DEPTH.
    body = {"model": "m", "messages": HELLO, "deep": nested(MAX_DEPTH - 1)}
    ctx = accept(orjson.dumps(body))
    assert ctx.body == body


def test_a_body_nested_one_level_past_max_depth_is_refused() -> None:
    raw = orjson.dumps({"model": "m", "messages": HELLO, "deep": nested(MAX_DEPTH)})
    assert reject(raw) == invalid_json("The request body nests objects and arrays more than 128 levels deep.")


def test_objects_count_towards_the_depth_as_arrays_do() -> None:
    deep: Any = {}
    for _ in range(MAX_DEPTH - 2):
        deep = {"k": deep}
    # The body (level 1) holding MAX_DEPTH - 1 objects reaches level MAX_DEPTH: fine.
    assert accept(orjson.dumps({"model": "m", "messages": HELLO, "deep": deep})).body["deep"] == deep
    raw = orjson.dumps({"model": "m", "messages": HELLO, "deep": {"k": deep}})
    assert reject(raw)["code"] == "invalid_json"


def test_the_depth_limit_applies_to_every_branch_not_only_the_first() -> None:
    raw = orjson.dumps({"model": "m", "messages": HELLO, "a": [1], "b": {"c": [nested(MAX_DEPTH - 2)]}})
    assert reject(raw)["code"] == "invalid_json"


def test_many_brackets_that_are_not_deep_are_accepted() -> None:
    # Brackets inside strings and side-by-side containers exceed MAX_DEPTH in number, not depth.
    body = {"model": "m", "messages": HELLO, "text": "[{" * 500, "flat": [[1]] * 300}
    assert accept(orjson.dumps(body)).body == body


def test_the_depth_limit_holds_on_the_embeddings_endpoint() -> None:
    raw = orjson.dumps({"model": "e", "input": "x", "deep": nested(MAX_DEPTH)})
    assert reject(raw, Endpoint.EMBEDDINGS)["code"] == "invalid_json"


# -- model ----------------------------------------------------------------------------------


MODEL_REQUIRED = invalid_value("model", "'model' is required and must be a non-empty string.")


@pytest.mark.parametrize("endpoint", [Endpoint.CHAT, Endpoint.EMBEDDINGS])
@pytest.mark.parametrize(
    "fields",
    [{}, {"model": None}, {"model": ""}, {"model": "   "}, {"model": "\t\n"}, {"model": 4}, {"model": ["m"]}],
)
def test_model_must_be_a_non_empty_string(fields: dict[str, Any], endpoint: Endpoint) -> None:
    raw = orjson.dumps({"messages": HELLO, "input": "x", **fields})
    assert reject(raw, endpoint) == MODEL_REQUIRED


def test_requested_model_is_the_model_as_sent() -> None:
    assert accept(chat(model="gpt-4o-mini")).requested_model == "gpt-4o-mini"
    assert accept(chat(model="prompt:greet@production")).requested_model == "prompt:greet@production"


# -- messages -------------------------------------------------------------------------------


def test_messages_are_required_for_a_model() -> None:
    raw = orjson.dumps({"model": "m"})
    assert reject(raw) == invalid_value("messages", "'messages' is required.")


def test_messages_null_counts_as_missing() -> None:
    raw = orjson.dumps({"model": "m", "messages": None})
    assert reject(raw) == invalid_value("messages", "'messages' is required.")


def test_a_prompt_brings_its_own_messages() -> None:
    ctx = accept(orjson.dumps({"model": "prompt:greet"}))
    assert ctx.body == {"model": "prompt:greet"}
    assert ctx.requested_model == "prompt:greet"


@pytest.mark.parametrize("messages", [{}, "hi", 3, True, {"role": "user"}])
def test_messages_must_be_an_array(messages: Any) -> None:
    raw = orjson.dumps({"model": "m", "messages": messages})
    assert reject(raw) == invalid_value("messages", "'messages' must be an array.")


def test_messages_must_not_be_empty_for_a_model() -> None:
    raw = orjson.dumps({"model": "m", "messages": []})
    assert reject(raw) == invalid_value("messages", "'messages' must not be empty.")


def test_a_prompt_may_send_an_empty_messages_array() -> None:
    assert accept(orjson.dumps({"model": "prompt:greet", "messages": []})).body["messages"] == []


@pytest.mark.parametrize("bad", ["hi", None, 1, ["user"]])
def test_each_message_must_be_an_object_named_by_its_index(bad: Any) -> None:
    raw = orjson.dumps({"model": "m", "messages": [*HELLO, bad]})
    assert reject(raw) == invalid_value("messages[1]", "'messages[1]' must be an object.")


@pytest.mark.parametrize("message", [{}, {"role": ""}, {"role": None}, {"role": 1}, {"role": ["user"]}])
def test_each_message_needs_a_non_empty_string_role(message: dict[str, Any]) -> None:
    raw = orjson.dumps({"model": "m", "messages": [*HELLO, *HELLO, message]})
    assert reject(raw) == invalid_value("messages[2].role", "'messages[2].role' must be a non-empty string.")


def test_the_first_bad_message_is_the_one_named() -> None:
    raw = orjson.dumps({"model": "m", "messages": [{"role": "user"}, {"role": ""}, "x"]})
    assert reject(raw)["param"] == "messages[1].role"


def test_message_contents_and_unknown_roles_are_not_the_gateways_business() -> None:
    messages = [{"role": "wizard", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}, {"role": "user"}]
    assert accept(chat(messages=messages)).body["messages"] == messages


# -- stream and stream_options --------------------------------------------------------------


@pytest.mark.parametrize("value", ["true", 1, 0, {}, []])
def test_stream_must_be_a_boolean(value: Any) -> None:
    assert reject(chat(stream=value)) == invalid_value("stream", "'stream' must be a boolean.")


@pytest.mark.parametrize(("fields", "expected"), [({}, False), ({"stream": None}, False),
                                                  ({"stream": False}, False), ({"stream": True}, True)])
def test_stream_sets_ctx_stream(fields: dict[str, Any], expected: bool) -> None:
    assert accept(chat(**fields)).stream is expected


@pytest.mark.parametrize("value", [True, "yes", [], 1])
def test_stream_options_must_be_an_object(value: Any) -> None:
    raw = chat(stream=True, stream_options=value)
    assert reject(raw) == invalid_value("stream_options", "'stream_options' must be an object.")


@pytest.mark.parametrize("value", ["true", 1, None, {}])
def test_include_usage_must_be_a_boolean(value: Any) -> None:
    raw = chat(stream=True, stream_options={"include_usage": value})
    assert reject(raw) == invalid_value("stream_options", "'stream_options.include_usage' must be a boolean.")


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"stream": True, "stream_options": {"include_usage": True}}, True),
        ({"stream": True, "stream_options": {"include_usage": False}}, False),
        ({"stream": True, "stream_options": {}}, False),
        ({"stream": True, "stream_options": None}, False),
        ({"stream": True}, False),
        # Usage in a stream's last chunk means nothing without a stream.
        ({"stream": False, "stream_options": {"include_usage": True}}, False),
        ({"stream_options": {"include_usage": True}}, False),
    ],
)
def test_include_usage_is_set_only_for_a_stream_that_asks(fields: dict[str, Any], expected: bool) -> None:
    assert accept(chat(**fields)).include_usage is expected


def test_stream_options_pass_through_with_other_keys() -> None:
    options = {"include_usage": True, "future_option": [1, 2]}
    ctx = accept(chat(stream=True, stream_options=options))
    assert ctx.body["stream_options"] == options
    assert ctx.include_usage is True


# -- integer ranges and numbers -------------------------------------------------------------


INT_RANGES = [
    ("n", 1, 128),
    ("max_tokens", 1, 2**31 - 1),
    ("max_completion_tokens", 1, 2**31 - 1),
    ("top_logprobs", 0, 20),
]


@pytest.mark.parametrize(("name", "lowest", "highest"), INT_RANGES)
def test_an_int_range_accepts_both_edges(name: str, lowest: int, highest: int) -> None:
    assert accept(chat(**{name: lowest})).body[name] == lowest
    assert accept(chat(**{name: highest})).body[name] == highest


@pytest.mark.parametrize(("name", "lowest", "highest"), INT_RANGES)
def test_an_int_range_refuses_one_past_either_edge(name: str, lowest: int, highest: int) -> None:
    expected = invalid_value(name, f"'{name}' must be an integer from {lowest} to {highest}.")
    assert reject(chat(**{name: lowest - 1})) == expected
    assert reject(chat(**{name: highest + 1})) == expected


@pytest.mark.parametrize(("name", "lowest", "highest"), INT_RANGES)
@pytest.mark.parametrize("value", [True, False])
def test_a_boolean_is_not_an_integer(name: str, lowest: int, highest: int, value: bool) -> None:
    # True == 1 and False == 0, inside some of these ranges: they must still be refused.
    expected = invalid_value(name, f"'{name}' must be an integer from {lowest} to {highest}.")
    assert reject(chat(**{name: value})) == expected


@pytest.mark.parametrize(("name", "lowest", "highest"), INT_RANGES)
@pytest.mark.parametrize("value", [2.0, "2", [2], {"v": 2}])
def test_an_int_field_refuses_other_types(name: str, lowest: int, highest: int, value: Any) -> None:
    expected = invalid_value(name, f"'{name}' must be an integer from {lowest} to {highest}.")
    assert reject(chat(**{name: value})) == expected


def test_an_absurd_integer_is_a_400_not_a_worst_case() -> None:
    raw = b'{"model": "m", "messages": [{"role": "user"}], "n": 18446744073709551615}'
    assert reject(raw) == invalid_value("n", "'n' must be an integer from 1 to 128.")


@pytest.mark.parametrize(("name", "lowest", "highest"), INT_RANGES)
def test_a_null_int_field_is_left_to_the_upstream(name: str, lowest: int, highest: int) -> None:
    assert accept(chat(**{name: None})).body[name] is None


NUMBERS = ["temperature", "top_p", "presence_penalty", "frequency_penalty"]


@pytest.mark.parametrize("name", NUMBERS)
@pytest.mark.parametrize("value", [0, 1, 0.7, -2.0, 1e300])
def test_number_fields_take_ints_and_floats(name: str, value: float) -> None:
    assert accept(chat(**{name: value})).body[name] == value


@pytest.mark.parametrize("name", NUMBERS)
@pytest.mark.parametrize("value", [True, False, "0.7", [0.7], {}])
def test_number_fields_refuse_booleans_and_other_types(name: str, value: Any) -> None:
    assert reject(chat(**{name: value})) == invalid_value(name, f"'{name}' must be a number.")


def test_rules_are_checked_in_a_fixed_order_model_first() -> None:
    raw = orjson.dumps({"model": "", "messages": [], "n": 0, "temperature": "hot"})
    assert reject(raw)["param"] == "model"
    raw = orjson.dumps({"model": "m", "messages": [], "n": 0, "temperature": "hot"})
    assert reject(raw)["param"] == "messages"
    raw = orjson.dumps({"model": "m", "messages": HELLO, "n": 0, "temperature": "hot"})
    assert reject(raw)["param"] == "n"


# -- embeddings -----------------------------------------------------------------------------


def embed(value: Any) -> bytes:
    return orjson.dumps({"model": "e", "input": value})


def test_embeddings_input_is_required() -> None:
    assert reject(orjson.dumps({"model": "e"}), Endpoint.EMBEDDINGS) == invalid_value("input", "'input' is required.")
    assert reject(embed(None), Endpoint.EMBEDDINGS) == invalid_value("input", "'input' is required.")


@pytest.mark.parametrize("value", ["", [], {}, 3, True, {"text": "x"}])
def test_embeddings_input_must_be_a_string_or_a_non_empty_array(value: Any) -> None:
    expected = invalid_value("input", "'input' must be a non-empty string or a non-empty array.")
    assert reject(embed(value), Endpoint.EMBEDDINGS) == expected


@pytest.mark.parametrize(
    "value",
    [
        "hello",
        ["hello", "world"],
        [0, 1, 2**31 - 1],
        [[1, 2], [3]],
        [[2**31 - 1]],
    ],
)
def test_embeddings_accept_the_four_openai_input_forms(value: Any) -> None:
    ctx = accept(embed(value), Endpoint.EMBEDDINGS)
    assert ctx.body["input"] == value
    assert ctx.requested_model == "e"


@pytest.mark.parametrize("form", ["a", 7, [7]])
def test_embeddings_take_at_most_2048_inputs_in_each_array_form(form: Any) -> None:
    """OpenAI's ``maxItems``: a mock model would otherwise build a vector per item (up to 65,536
    dimensions each) in the gateway's own process."""
    assert accept(embed([form] * 2048), Endpoint.EMBEDDINGS).body["input"] == [form] * 2048
    expected = invalid_value("input", "'input' may hold at most 2048 items.")
    assert reject(embed([form] * 2049), Endpoint.EMBEDDINGS) == expected


@pytest.mark.parametrize(
    "value",
    [
        ["a", 1],  # strings and token ids mixed
        [1, "a"],
        [1, [2]],
        [[1], 2],
        [[1], "a"],
        [[1], []],  # an empty token array
        [[]],
        [True],  # booleans are not token ids
        [[1, False]],
        [-1],  # token ids are 0 .. 2**31 - 1
        [2**31],
        [[2**31]],
        [1.5],
        [None],
        [{"text": "a"}],
        [["a"]],  # arrays of strings are not a form
    ],
)
def test_embeddings_refuse_mixed_or_malformed_input_arrays(value: Any) -> None:
    assert reject(embed(value), Endpoint.EMBEDDINGS) == invalid_value("input", EMBEDDING_FORMS)


def test_embeddings_bodies_are_not_checked_as_chat_bodies() -> None:
    # No messages needed, and chat-only fields are the upstream's to judge.
    ctx = accept(orjson.dumps({"model": "e", "input": "x", "stream": "yes", "n": 0}), Endpoint.EMBEDDINGS)
    assert ctx.stream is False
    assert ctx.include_usage is False


@pytest.mark.parametrize("dimensions", [0, -1, 65_537, True, 1.5, "8", 2**40])
def test_embedding_dimensions_out_of_range_are_refused(dimensions: object) -> None:
    # dimensions=0 once reached the mock provider and came back as a 500 (found by the fuzz test).
    body = orjson.dumps({"model": "e", "input": "x", "dimensions": dimensions})
    assert reject(body, Endpoint.EMBEDDINGS) == invalid_value(
        "dimensions", "'dimensions' must be an integer from 1 to 65536."
    )


@pytest.mark.parametrize("encoding", [True, "int8", 0, ""])
def test_embedding_encoding_format_must_be_float_or_base64(encoding: object) -> None:
    body = orjson.dumps({"model": "e", "input": "x", "encoding_format": encoding})
    assert reject(body, Endpoint.EMBEDDINGS) == invalid_value(
        "encoding_format", "'encoding_format' must be 'float' or 'base64'."
    )


def test_an_empty_string_in_an_input_array_is_refused() -> None:
    assert reject(embed(["a", ""]), Endpoint.EMBEDDINGS)["param"] == "input"


@pytest.mark.parametrize("dimensions", [1, 256, 65_536])
def test_embedding_dimensions_in_range_pass(dimensions: int) -> None:
    ctx = accept(orjson.dumps({"model": "e", "input": "x", "dimensions": dimensions}), Endpoint.EMBEDDINGS)
    assert ctx.body["dimensions"] == dimensions


def test_a_chat_body_without_input_is_refused_on_the_embeddings_endpoint() -> None:
    assert reject(chat(), Endpoint.EMBEDDINGS) == invalid_value("input", "'input' is required.")


# -- what a valid body leaves behind --------------------------------------------------------


def test_unknown_fields_pass_through_untouched() -> None:
    body = {
        "model": "m",
        "messages": HELLO,
        "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
        "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}},
        "logprobs": True,
        "seed": 7,
        "stop": ["\n"],
        "x_provider_extra": {"nested": [1, 2.5, None, True, "s"]},
        "user": "u" * 300,
    }
    raw = orjson.dumps(body)
    ctx = accept(raw)
    assert ctx.body == body
    assert list(ctx.body) == list(body), "key order kept"
    assert orjson.dumps(ctx.body) == raw, "nothing added, removed or rewritten"
    assert ctx.raw_body == raw


def test_user_is_kept_for_the_ledger_truncated_to_200_characters() -> None:
    long = "é" * 150 + "x" * 100
    ctx = accept(chat(user=long))
    assert ctx.user == long[:200]
    assert len(ctx.user) == 200
    assert ctx.body["user"] == long, "the upstream gets the caller's value"
    assert accept(chat(user="u" * 200)).user == "u" * 200
    assert accept(chat(user="u" * 201)).user == "u" * 200
    assert accept(chat(user="alice")).user == "alice"
    assert accept(chat(user="")).user == ""


@pytest.mark.parametrize("fields", [{}, {"user": None}, {"user": 42}, {"user": ["alice"]}])
def test_a_user_that_is_not_a_string_is_ignored(fields: dict[str, Any]) -> None:
    ctx = accept(chat(**fields))
    assert ctx.user is None


def test_user_is_kept_on_the_embeddings_endpoint_too() -> None:
    ctx = accept(orjson.dumps({"model": "e", "input": "x", "user": "v" * 250}), Endpoint.EMBEDDINGS)
    assert ctx.user == "v" * 200


def test_a_refused_body_leaves_the_body_unset() -> None:
    ctx = context(chat(n=0))
    with pytest.raises(InvalidRequest):
        parse_body(ctx)
    assert ctx.body == {}


# -- the stage ------------------------------------------------------------------------------


class Next:
    def __init__(self) -> None:
        self.calls: list[RequestContext] = []
        self.reply = JsonReply(status=200, body=b"{}")

    async def __call__(self, ctx: RequestContext) -> Reply:
        self.calls.append(ctx)
        return self.reply


async def test_the_stage_parses_then_calls_the_next_stage_with_the_same_context() -> None:
    ctx = context(chat(stream=True, stream_options={"include_usage": True}, user="bob"))
    after = Next()
    reply = await ParseRequest()(ctx, after)
    assert reply is after.reply
    assert after.calls == [ctx]
    assert after.calls[0] is ctx
    assert (ctx.requested_model, ctx.stream, ctx.include_usage, ctx.user) == ("m", True, True, "bob")
    assert ctx.body == {"model": "m", "messages": HELLO, "stream": True, "stream_options": {"include_usage": True},
                        "user": "bob"}


async def test_the_stage_does_not_call_the_next_stage_for_a_bad_body() -> None:
    after = Next()
    with pytest.raises(InvalidRequest) as caught:
        await ParseRequest()(context(chat(n=0)), after)
    assert caught.value.param == "n"
    assert after.calls == []
