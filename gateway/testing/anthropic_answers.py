"""Deterministic Anthropic Messages API answers for the fake upstream, with no I/O.

Only the fake upstream speaks Anthropic's wire format (litellm's Anthropic path is tested
against it), so these answers live beside it; they reuse the OpenAI mock's text, token and
tool-argument helpers so both formats answer a prompt the same way.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import orjson

from gateway.providers import mock_responses as answers
from gateway.providers.mock_responses import JSON

__all__ = ["anthropic_message", "anthropic_sse_event", "anthropic_stream_events"]

# ---------------------------------------------------------------------------------------------
# Anthropic Messages API
# ---------------------------------------------------------------------------------------------


def _anthropic_tool(body: Mapping[str, Any]) -> Mapping[str, Any] | None:
    tools = body.get("tools")
    if not isinstance(tools, list | tuple) or not tools:
        return None
    choice = body.get("tool_choice")
    kind = choice.get("type") if isinstance(choice, dict) else None
    if kind == "none":
        return None
    named = [t for t in tools if isinstance(t, dict) and isinstance(t.get("name"), str)]
    if not named:
        return None
    if kind == "tool" and isinstance(choice, dict):
        for tool in named:
            if tool["name"] == choice.get("name"):
                return tool
    return named[0]


def _anthropic_answer(body: Mapping[str, Any]) -> tuple[list[JSON], str, str | None, int, int]:
    """Content blocks, stop reason, matched stop sequence, input tokens and output tokens."""
    messages = body.get("messages")
    message_id = "msg_" + answers.digest(answers.request_identity(body))
    tool = _anthropic_tool(body)
    input_tokens = answers.prompt_tokens(body)
    if tool is not None:
        filler = answers.last_user_text(messages).strip()[:100] or "mock"
        arguments = answers.tool_arguments(tool.get("input_schema"), filler)
        tool_id = "toolu_" + hashlib.blake2b(message_id.encode(), digest_size=12).hexdigest()
        block: JSON = {"type": "tool_use", "id": tool_id, "name": tool["name"], "input": arguments}
        output = answers.count_tokens(str(tool["name"])) + answers.count_tokens(answers.dumps_str(arguments))
        return [block], "tool_use", None, input_tokens, output

    stops = answers.stop_sequences(body.get("stop_sequences"))
    text, matched = answers.apply_stop(answers.answer_text(messages), stops)
    stop_reason = "stop_sequence" if matched is not None else "end_turn"
    text, truncated = answers.apply_max_tokens(text, body.get("max_tokens"))
    if truncated:
        stop_reason, matched = "max_tokens", None
    return [{"type": "text", "text": text}], stop_reason, matched, input_tokens, answers.count_tokens(text)


def anthropic_message(body: Mapping[str, Any]) -> JSON:
    """A Messages API response with the same text the OpenAI path gives for the same conversation."""
    content, stop_reason, stop_sequence, input_tokens, output_tokens = _anthropic_answer(body)
    return {
        "id": "msg_" + answers.digest(answers.request_identity(body)),
        "type": "message",
        "role": "assistant",
        "model": str(body.get("model") or answers.DEFAULT_MODEL),
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": stop_sequence,
        "usage": {
            "input_tokens": input_tokens,
            "output_tokens": output_tokens,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
        },
    }


def anthropic_stream_events(body: Mapping[str, Any], *, chunks: int = 8) -> list[tuple[str, JSON]]:
    """The ``anthropic_message`` answer as (event name, data) pairs in Anthropic's streaming order."""
    full = anthropic_message(body)
    start_message = {
        **full,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {**full["usage"], "output_tokens": 1},
    }
    events: list[tuple[str, JSON]] = [("message_start", {"type": "message_start", "message": start_message})]
    for index, block in enumerate(full["content"]):
        if block["type"] == "tool_use":
            start_block: JSON = {"type": "tool_use", "id": block["id"], "name": block["name"], "input": {}}
            deltas: list[JSON] = [
                {"type": "input_json_delta", "partial_json": part}
                for part in answers.split_text(answers.dumps_str(block["input"]), chunks)
            ]
        else:
            start_block = {"type": "text", "text": ""}
            deltas = [
                {"type": "text_delta", "text": "".join(group)}
                for group in answers.split_groups(answers.text_pieces(block["text"]), chunks)
            ]
        events.append(
            (
                "content_block_start",
                {"type": "content_block_start", "index": index, "content_block": start_block},
            )
        )
        if index == 0:
            events.append(("ping", {"type": "ping"}))
        events.extend(
            ("content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta}) for delta in deltas
        )
        events.append(("content_block_stop", {"type": "content_block_stop", "index": index}))
    events.append(
        (
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": full["stop_reason"], "stop_sequence": full["stop_sequence"]},
                "usage": {"output_tokens": full["usage"]["output_tokens"]},
            },
        )
    )
    events.append(("message_stop", {"type": "message_stop"}))
    return events


def anthropic_sse_event(event: str, data: Mapping[str, Any]) -> bytes:
    """One Anthropic server-sent event: unlike OpenAI, Anthropic names every event."""
    return b"event: " + event.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"
