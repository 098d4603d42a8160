"""The OpenAI wire format, in one place: SSE framing, ``[DONE]``, error events, usage, answers.

Everything that reads or writes OpenAI's chat and embeddings bodies outside the providers'
own request building goes through here: the stream relay (usage out of events), the answer
tap (a completion assembled from chunks), the cache (replaying a stored completion as
chunks), the usage stage (the text billed as output) and the evaluators (an answer's text).
A second parser of the same format is how the gateway once disagreed with itself.

Pure functions and one builder class; no I/O, no pipeline types beyond ``Usage``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Final

import orjson

from gateway.context import Usage
from gateway.errors import GatewayError, error_body

DONE_EVENT: Final = b"data: [DONE]\n\n"
_ENVELOPE_EXTRAS: Final = ("system_fingerprint", "service_tier")
#: The message fields whose text is billed as output (with tool calls' names and arguments).
_BILLED_TEXT: Final = ("content", "refusal", "reasoning_content")


# -- framing -------------------------------------------------------------------------------------


def sse(payload: bytes) -> bytes:
    """One ``data:`` event."""
    return b"data: " + payload + b"\n\n"


def error_event(error: GatewayError) -> bytes:
    """A mid-stream failure: the status line is gone, so the error travels as an event."""
    return sse(error_body(error))


def data_payloads(parts: Iterable[bytes]) -> list[bytes]:
    """The ``data:`` payloads of complete events, up to (not including) ``[DONE]``."""
    payloads = [event[5:].strip() for event in b"".join(parts).split(b"\n\n") if event[:5] == b"data:"]
    if b"[DONE]" in payloads:
        del payloads[payloads.index(b"[DONE]"):]
    return payloads


# -- usage ---------------------------------------------------------------------------------------


def usage_from(data: dict[str, Any]) -> Usage | None:
    """The usage of a whole JSON answer (chat or embeddings), if it reports one."""
    usage = data.get("usage")
    if not isinstance(usage, dict):
        return None
    prompt = usage.get("prompt_tokens")
    completion = usage.get("completion_tokens", 0)
    if not isinstance(prompt, int) or not isinstance(completion, int):
        return None
    return Usage(prompt, completion)


def usage_of_event(payload: bytes) -> Usage | None:
    """The usage a stream event's payload carries (the final chunk, when asked for)."""
    try:
        data = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return None
    usage = data.get("usage") if isinstance(data, dict) else None
    if not isinstance(usage, dict):
        return None
    return Usage(int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0))


# -- answers -------------------------------------------------------------------------------------


def message_texts(message: dict[str, Any]) -> list[str]:
    """The billed text of one message (or one stream delta): content, refusal, reasoning, tools."""
    if len(message) == 1 and type(content := message.get("content")) is str:
        return [content]  # most stream deltas: the loops below would find just this
    texts = []
    for key in _BILLED_TEXT:
        value = message.get(key)
        if isinstance(value, str):
            texts.append(value)
    for call in message.get("tool_calls") or ():
        function = call.get("function") if isinstance(call, dict) else None
        if isinstance(function, dict):
            texts.extend(str(function.get(part) or "") for part in ("name", "arguments"))
    return texts


def completion_text(data: dict[str, Any]) -> str:
    """The text of a whole chat completion that is billed as output (when it reports no usage)."""
    texts: list[str] = []
    for choice in data.get("choices") or ():
        message = choice.get("message") if isinstance(choice, dict) else None
        if isinstance(message, dict):
            texts.extend(message_texts(message))
    return "".join(texts)


def first_answer(data: dict[str, Any]) -> str:
    """The first choice's text, or its first tool call's arguments when it called a tool."""
    choices = data.get("choices") or []
    if not choices or not isinstance(choices[0], dict):
        return ""
    message = choices[0].get("message") or {}
    content = message.get("content")
    if isinstance(content, str) and content:
        return content
    calls = message.get("tool_calls") or []
    if calls and isinstance(calls[0], dict):
        return str((calls[0].get("function") or {}).get("arguments") or "")
    return ""


class CompletionBuilder:
    """Puts the one ``chat.completion`` a stream's chunks add up to back together.

    Content and refusals are concatenated, tool-call arguments joined per call, logprobs
    appended. It is tolerant while adding (a cut stream still has the text it relayed, which is
    what gets billed) and strict in :meth:`completion`, which only a complete, well-formed,
    error-free stream passes (what the cache stores). ``texts`` keeps the billed text in event
    order, as the relayed bytes carried it, so counting it needs no second pass.
    """

    __slots__ = ("choices", "envelope", "error", "malformed", "texts", "usage_data")

    def __init__(self) -> None:
        self.envelope: dict[str, Any] = {}
        self.choices: dict[int, _Choice] = {}
        self.usage_data: Any = None
        self.texts: list[str] = []
        self.error = False  # the stream carried an error event
        self.malformed = False  # an event was not a JSON object

    def add_parts(self, parts: Iterable[bytes]) -> None:
        for payload in data_payloads(parts):
            try:
                chunk = orjson.loads(payload)
            except orjson.JSONDecodeError:
                self.malformed = True
                continue
            self.add(chunk)

    def add(self, chunk: Any) -> None:
        if not isinstance(chunk, dict):
            self.malformed = True
            return
        if chunk.get("error") is not None:
            self.error = True
            return
        if not self.envelope:
            self.envelope = {"id": chunk.get("id"), "created": chunk.get("created"), "model": chunk.get("model")}
            for name in _ENVELOPE_EXTRAS:
                if chunk.get(name) is not None:
                    self.envelope[name] = chunk[name]
        if isinstance(chunk.get("usage"), dict):
            self.usage_data = chunk["usage"]
        for choice in chunk.get("choices") or ():
            if not isinstance(choice, dict):
                continue
            index = choice.get("index", 0)
            state = self.choices.get(index)
            if state is None:
                state = self.choices[index] = _Choice()
            delta = choice.get("delta")
            if not isinstance(delta, dict):
                delta = None
            state.add(choice, delta)
            if delta:
                self.texts.extend(message_texts(delta))

    @property
    def finished(self) -> bool:
        """Every choice has its finish reason (and there is at least one)."""
        return bool(self.choices) and all(choice.finish_reason is not None for choice in self.choices.values())

    def completion(self, usage: Usage | None) -> dict[str, Any]:
        """The assembled completion; ``ValueError`` unless the stream was whole and well-formed."""
        if self.error:
            raise ValueError("the stream carried an error event")
        if self.malformed:
            raise ValueError("the stream carried a malformed event")
        if not self.finished:
            raise ValueError("the stream did not finish every choice")
        return self.snapshot(usage)

    def snapshot(self, usage: Usage | None) -> dict[str, Any]:
        """What the stream carried so far, as a completion (choices may be unfinished)."""
        usage_data = self.usage_data
        if usage_data is None and usage is not None:
            usage_data = {
                "prompt_tokens": usage.prompt_tokens,
                "completion_tokens": usage.completion_tokens,
                "total_tokens": usage.total_tokens,
            }
        envelope = self.envelope
        completion: dict[str, Any] = {
            "id": envelope.get("id"),
            "object": "chat.completion",
            "created": envelope.get("created"),
            "model": envelope.get("model"),
            **{name: envelope[name] for name in _ENVELOPE_EXTRAS if name in envelope},
            "choices": [self.choices[index].result(index) for index in sorted(self.choices)],
        }
        if usage_data is not None:
            completion["usage"] = usage_data
        return completion


def assemble(parts: list[bytes], usage: Usage | None) -> dict[str, Any]:
    """The ``chat.completion`` a complete stream adds up to (``ValueError`` if it is not one)."""
    builder = CompletionBuilder()
    builder.add_parts(parts)
    return builder.completion(usage)


class _Choice:
    """One choice being put back together from its deltas."""

    __slots__ = ("finish_reason", "function_call", "logprobs", "message", "tools")

    def __init__(self) -> None:
        self.message: dict[str, Any] = {"role": "assistant"}
        self.tools: dict[int, dict[str, Any]] = {}
        self.function_call: dict[str, str] | None = None
        self.logprobs: dict[str, Any] | None = None
        self.finish_reason: str | None = None

    def add(self, choice: dict[str, Any], delta: dict[str, Any] | None) -> None:
        for name, value in (delta or {}).items():
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
    """The SSE bytes of a stored completion, as a streaming caller expects them.

    A role chunk, the message (content, tool calls, ...) in one delta, a finish chunk per
    choice, a usage chunk when the caller asked for ``stream_options.include_usage``, then
    ``[DONE]``.
    """
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
        events.append(sse(orjson.dumps({**base, "choices": choices, **extra})))

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
