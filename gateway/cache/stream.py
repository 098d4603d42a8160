"""Streamed answers in and out of the cache.

In: ``StreamCapture`` passes a stream's events through untouched and keeps a copy; only when
the upstream's ``[DONE]`` went by is the copy complete. ``assemble`` then rebuilds the one
``chat.completion`` the chunks add up to (content and refusals concatenated, tool-call
arguments joined per call, logprobs appended), which is what gets stored: streaming and
non-streaming callers share entries.

Out: ``replay`` turns a stored completion into the chunks OpenAI would have sent — a role
chunk, the message (content, tool calls, ...) in one delta, a finish chunk per choice, a
usage chunk when the caller asked for ``stream_options.include_usage``, then ``[DONE]``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Final

import orjson

from gateway.context import Usage
from gateway.providers.sse import DONE_EVENT

_ENVELOPE_EXTRAS: Final = ("system_fingerprint", "service_tier")
#: Raw SSE is bulkier than the answer it carries (an envelope per chunk); cap the copy at this
#: multiple of the entry limit so a huge stream is dropped early instead of held in memory.
RAW_OVERHEAD_FACTOR: Final = 8


class StreamCapture:
    """An async iterator over ``events`` that keeps a bounded copy of what passed through."""

    __slots__ = ("_events", "_limit", "_size", "complete", "overflow", "parts")

    def __init__(self, events: AsyncIterator[bytes], limit_bytes: int) -> None:
        self._events = events
        self._limit = limit_bytes * RAW_OVERHEAD_FACTOR
        self._size = 0
        self.parts: list[bytes] = []
        self.complete = False  # [DONE] was seen: the copy holds the whole answer
        self.overflow = False  # too big to cache: the copy was dropped

    def __aiter__(self) -> StreamCapture:
        return self

    async def __anext__(self) -> bytes:
        batch = await self._events.__anext__()
        if not self.overflow:
            self._size += len(batch)
            if self._size > self._limit:
                self.overflow = True
                self.parts.clear()
            else:
                self.parts.append(batch)
        if batch.endswith(DONE_EVENT):
            self.complete = True
        return batch

    async def aclose(self) -> None:
        # Close the upstream's iterator even if this one was never started (the caller left
        # before the first event): that is what releases the upstream connection.
        aclose = getattr(self._events, "aclose", None)
        if aclose is not None:
            await aclose()


def assemble(parts: list[bytes], usage: Usage | None) -> dict[str, Any]:
    """The ``chat.completion`` a complete stream adds up to.

    Raises ``ValueError`` (orjson's decode error is one) when the stream carries an error
    event, malformed JSON, or a choice that never finished: such a stream is not stored.
    """
    envelope: dict[str, Any] = {}
    choices: dict[int, _Choice] = {}
    usage_data: Any = None
    for event in b"".join(parts).split(b"\n\n"):
        if not event.startswith(b"data:"):
            continue
        payload = event[5:].strip()
        if payload == b"[DONE]":
            break
        chunk = orjson.loads(payload)
        if not isinstance(chunk, dict) or chunk.get("error") is not None:
            raise ValueError("the stream carried an error event")
        if not envelope:
            envelope = {"id": chunk.get("id"), "created": chunk.get("created"), "model": chunk.get("model")}
            for name in _ENVELOPE_EXTRAS:
                if chunk.get(name) is not None:
                    envelope[name] = chunk[name]
        if isinstance(chunk.get("usage"), dict):
            usage_data = chunk["usage"]
        for choice in chunk.get("choices") or ():
            index = choice.get("index", 0)
            state = choices.get(index)
            if state is None:
                state = choices[index] = _Choice()
            state.add(choice)
    if not choices or any(choice.finish_reason is None for choice in choices.values()):
        raise ValueError("the stream did not finish every choice")
    if usage_data is None and usage is not None:
        usage_data = {
            "prompt_tokens": usage.prompt_tokens,
            "completion_tokens": usage.completion_tokens,
            "total_tokens": usage.total_tokens,
        }
    completion: dict[str, Any] = {
        "id": envelope.get("id"),
        "object": "chat.completion",
        "created": envelope.get("created"),
        "model": envelope.get("model"),
        **{name: envelope[name] for name in _ENVELOPE_EXTRAS if name in envelope},
        "choices": [choices[index].result(index) for index in sorted(choices)],
    }
    if usage_data is not None:
        completion["usage"] = usage_data
    return completion


class _Choice:
    """One choice being put back together from its deltas."""

    __slots__ = ("finish_reason", "function_call", "logprobs", "message", "tools")

    def __init__(self) -> None:
        self.message: dict[str, Any] = {"role": "assistant"}
        self.tools: dict[int, dict[str, Any]] = {}
        self.function_call: dict[str, str] | None = None
        self.logprobs: dict[str, Any] | None = None
        self.finish_reason: str | None = None

    def add(self, choice: dict[str, Any]) -> None:
        delta = choice.get("delta") or {}
        for name, value in delta.items():
            if value is None:
                continue
            if name == "tool_calls":
                self._add_tool_calls(value)
            elif name == "function_call":
                current = self.function_call or {"name": "", "arguments": ""}
                current["name"] += value.get("name") or ""
                current["arguments"] += value.get("arguments") or ""
                self.function_call = current
            elif name == "role":
                self.message["role"] = value
            elif isinstance(value, str):
                self.message[name] = self.message.get(name, "") + value
            elif isinstance(value, list):
                self.message[name] = [*self.message.get(name, []), *value]
            else:
                self.message[name] = value
        logprobs = choice.get("logprobs")
        if isinstance(logprobs, dict):
            merged = self.logprobs if self.logprobs is not None else {}
            for name, items in logprobs.items():
                if isinstance(items, list):
                    merged[name] = [*(merged.get(name) or []), *items]
                elif name not in merged:
                    merged[name] = items
            self.logprobs = merged
        if choice.get("finish_reason") is not None:
            self.finish_reason = choice["finish_reason"]

    def _add_tool_calls(self, calls: list[dict[str, Any]]) -> None:
        for position, call in enumerate(calls):
            index = call.get("index", position)
            tool = self.tools.get(index)
            if tool is None:
                tool = self.tools[index] = {"id": None, "type": "function", "function": {"name": "", "arguments": ""}}
            if call.get("id"):
                tool["id"] = call["id"]
            if call.get("type"):
                tool["type"] = call["type"]
            function = call.get("function") or {}
            tool["function"]["name"] += function.get("name") or ""
            tool["function"]["arguments"] += function.get("arguments") or ""

    def result(self, index: int) -> dict[str, Any]:
        message = {"role": "assistant", "content": None, "refusal": None, **self.message}
        if self.tools:
            message["tool_calls"] = [self.tools[i] for i in sorted(self.tools)]
        if self.function_call is not None:
            message["function_call"] = self.function_call
        return {"index": index, "message": message, "logprobs": self.logprobs, "finish_reason": self.finish_reason}


def replay(completion: dict[str, Any], include_usage: bool) -> bytes:
    """The SSE bytes of a stored completion, as a streaming caller expects them."""
    base: dict[str, Any] = {
        "id": completion.get("id"),
        "object": "chat.completion.chunk",
        "created": completion.get("created"),
        "model": completion.get("model"),
    }
    for name in _ENVELOPE_EXTRAS:
        if completion.get(name) is not None:
            base[name] = completion[name]
    if include_usage:
        base["usage"] = None  # OpenAI's shape: null on every chunk but the last
    events: list[bytes] = []

    def emit(choices: list[dict[str, Any]], **extra: Any) -> None:
        events.append(b"data: " + orjson.dumps({**base, "choices": choices, **extra}) + b"\n\n")

    for choice in completion.get("choices") or ():
        index = choice.get("index", 0)
        message = choice.get("message") or {}
        content = message.get("content")
        opening = {"role": message.get("role") or "assistant", "content": "" if isinstance(content, str) else None}
        emit([{"index": index, "delta": opening, "logprobs": None, "finish_reason": None}])
        delta: dict[str, Any] = {}
        for name, value in message.items():
            if name == "role" or value is None:
                continue
            if name == "tool_calls" and isinstance(value, list):
                value = [{"index": position, **call} for position, call in enumerate(value)]
            delta[name] = value
        if delta or choice.get("logprobs") is not None:
            emit([{"index": index, "delta": delta, "logprobs": choice.get("logprobs"), "finish_reason": None}])
        emit([{"index": index, "delta": {}, "logprobs": None, "finish_reason": choice.get("finish_reason")}])
    if include_usage:
        emit([], usage=completion.get("usage"))
    events.append(DONE_EVENT)
    return b"".join(events)
