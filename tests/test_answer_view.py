"""The answer tap's reading of a stream: one view per state of the stream, never a stale one."""

from __future__ import annotations

import orjson

from gateway.answer import Answer
from gateway.wire import DONE_EVENT, sse


def _chunk(content: str | None = None, finish: str | None = None, tool: dict[str, object] | None = None) -> bytes:
    delta: dict[str, object] = {}
    if content is not None:
        delta["content"] = content
    if tool is not None:
        delta["tool_calls"] = [tool]
    return sse(orjson.dumps({"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "m",
                             "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}))


def test_a_streams_readings_share_one_view_until_the_next_event() -> None:
    answer = Answer(streamed=True)
    answer.relayed(_chunk("Hel"))
    assert answer.text == "Hel" and answer.finish_reasons == [None] and answer.tool_calls == []
    first = answer._view()
    assert answer._view() is first  # text, tool calls and finish reasons: one view, built once

    answer.relayed(_chunk("lo") + _chunk(tool={"index": 0, "id": "t1", "function": {"name": "f", "arguments": "{}"}}))
    assert answer._view() is not first  # a new event: a new view
    assert answer.text == "Hello"
    assert [call["id"] for call in answer.tool_calls] == ["t1"]

    answer.relayed(_chunk(finish="stop") + DONE_EVENT)
    assert answer.finish_reasons == ["stop"] and answer.complete
    assert answer.completion()["choices"][0]["message"]["content"] == "Hello"


def test_events_that_are_not_data_and_what_follows_done_are_not_read() -> None:
    from gateway.wire import data_payloads

    parts = [b": keep-alive\n\n", _chunk("a"), b"event: ping\n\n", b"data:{\"x\":1}\n\n", DONE_EVENT, _chunk("late")]
    payloads = data_payloads(parts)
    assert len(payloads) == 2 and orjson.loads(payloads[1]) == {"x": 1}
    assert data_payloads([DONE_EVENT]) == [] and data_payloads([b""]) == []


def test_a_delta_that_is_not_an_object_is_skipped_not_fatal() -> None:
    """An upstream's odd chunk marks nothing and breaks nothing: the rest of the answer is read."""
    from gateway.wire import CompletionBuilder

    builder = CompletionBuilder()
    builder.add({"id": "c1", "choices": [{"index": 0, "delta": ["not", "an", "object"]}]})
    builder.add({"id": "c1", "choices": [{"index": 0, "delta": {"content": "ok", "refusal": "no"},
                                          "finish_reason": "stop"}]})
    assert builder.texts == ["ok", "no"]  # the billed texts of a delta with several, in their order
    assert builder.completion(None)["choices"][0]["message"]["content"] == "ok"


def test_reading_is_text_tool_calls_and_the_finish_reasons_given_in_one_pass() -> None:
    call = {"id": "t1", "type": "function", "function": {"name": "f", "arguments": '{"x": 1}'}}
    body = {"choices": [
        {"index": 0, "finish_reason": "tool_calls",
         "message": {"role": "assistant", "content": None, "tool_calls": [call]}},
        {"index": 1, "finish_reason": None, "message": {"role": "assistant", "content": "two"}},
        "not a choice",
    ]}
    answer = Answer.of_json(200, orjson.dumps(body), None)
    assert answer.reading() == ('{"x": 1}', [call], ("tool_calls",))
    assert answer.reading() == (answer.text, answer.tool_calls, tuple(r for r in answer.finish_reasons if r))
    streamed = Answer(streamed=True)
    streamed.relayed(_chunk("Hi") + _chunk(finish="stop"))
    assert streamed.reading() == ("Hi", [], ("stop",))
    assert Answer.of_json(200, b"not json", None).reading() == ("", [], ())
