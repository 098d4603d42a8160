"""The one answer tap: what the upstream answered, read once, for everyone who needs it.

The upstream stage puts a tap on every reply it returns and sets ``ctx.answer``. The cache
(store a streamed answer), the usage stage (count output the upstream did not report), the
evaluators (an answer's text) and, later, tracing and scoring all read ``ctx.answer``; nobody
captures a stream a second time.

It costs almost nothing when nobody reads it: a JSON answer is already parsed (or parsed on
first read), and a stream's events are only appended to a list as they pass. They are parsed
on first read, or once they pass ``compact_at`` bytes: raw SSE is about ten times the text it
carries, so a long stream is folded into its assembled form as it goes and holds roughly its
answer's size, never its whole wire form.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any, Final

import orjson

from gateway.context import JsonReply, Reply, RequestContext, Usage
from gateway.wire import DONE_EVENT, CompletionBuilder, completion_text, first_answer, usage_from

#: Raw stream bytes held before they are folded into the assembled answer.
COMPACT_AT: Final = 256 * 1024


class Answer:
    """A reply's answer: a whole JSON body, or a stream as far as it went.

    ``complete`` is true for a 200 JSON answer, and for a stream whose ``[DONE]`` went by with
    no error event in it. ``usage`` is what the upstream reported (``None`` if it did not).
    """

    __slots__ = (
        "_body", "_builder", "_data", "_parts", "_size", "_view_of_stream", "compact_at", "complete", "first_at",
        "status", "streamed",
    )

    def __init__(self, *, streamed: bool, status: int = 200, compact_at: int = COMPACT_AT) -> None:
        self.streamed = streamed
        self.status = status
        self.complete = False
        self.compact_at = compact_at
        self._data: dict[str, Any] | None = None
        self._body: bytes | None = None
        self._parts: list[bytes] = []
        self._size = 0
        self._builder: CompletionBuilder | None = None
        # A stream's answer as a completion so far, kept until the next event: tracing reads its
        # text, tool calls and finish reasons, three readings of one view. Read-only for callers.
        self._view_of_stream: dict[str, Any] | None = None
        # When a stream's first event was relayed (perf_counter): its time to first token.
        self.first_at: float | None = None

    @classmethod
    def of_json(cls, status: int, body: bytes, data: dict[str, Any] | None) -> Answer:
        answer = cls(streamed=False, status=status)
        answer._body = body
        answer._data = data
        answer.complete = status == 200
        return answer

    @classmethod
    def of_completion(cls, data: dict[str, Any], *, streamed: bool) -> Answer:
        """A complete answer known as a completion (a cache hit)."""
        answer = cls(streamed=streamed)
        answer._data = data
        answer.complete = True
        return answer

    # -- filled by the tap -----------------------------------------------------------------------

    def relayed(self, batch: bytes) -> None:
        if self.first_at is None:
            self.first_at = time.perf_counter()
        self._parts.append(batch)
        self._size += len(batch)
        self._view_of_stream = None
        if batch.endswith(DONE_EVENT):
            self.complete = True
        elif self._size >= self.compact_at:
            self._fold()

    def _fold(self) -> CompletionBuilder:
        builder = self._builder
        if builder is None:
            builder = self._builder = CompletionBuilder()
        if self._parts:
            builder.add_parts(self._parts)
            self._parts.clear()
            self._size = 0
        return builder

    # -- read by the stages ----------------------------------------------------------------------

    @property
    def empty(self) -> bool:
        """Nothing was relayed (a stream that failed or was left before its first event)."""
        return self.streamed and not self._parts and self._builder is None and self._data is None

    def data(self) -> dict[str, Any] | None:
        """The JSON body (a JSON answer), or ``None``."""
        if self._data is None and self._body is not None:
            try:
                parsed = orjson.loads(self._body)
            except orjson.JSONDecodeError:
                parsed = None
            self._data = parsed if isinstance(parsed, dict) else None
            self._body = None if self._data is not None else self._body
        return self._data

    def completion(self, usage: Usage | None = None) -> dict[str, Any]:
        """The whole ``chat.completion``; ``ValueError`` unless the answer is complete and sound."""
        if not self.streamed or self._data is not None:
            data = self.data()
            if data is None or not self.complete:
                raise ValueError("not a complete JSON answer")
            return data
        if not self.complete:
            raise ValueError("the stream did not reach [DONE]")
        return self._fold().completion(usage)

    def _view(self) -> dict[str, Any]:
        """The answer as a completion, as far as it went (tolerant: for reading, not storing)."""
        if not self.streamed or self._data is not None:
            return self.data() or {}
        view = self._view_of_stream
        if view is None:
            view = self._view_of_stream = self._fold().snapshot(None)
        return view

    @property
    def output_text(self) -> str:
        """All the text billed as output: every choice's content, refusal, reasoning and tools."""
        if not self.streamed or self._data is not None:
            data = self.data()
            return completion_text(data) if data is not None else ""
        return "".join(self._fold().texts)

    @property
    def text(self) -> str:
        """The first choice's text, or its first tool call's arguments (what evaluators judge)."""
        return first_answer(self._view())

    @property
    def usage(self) -> Usage | None:
        """The usage the answer itself carries (a JSON body's, a stream's usage chunk), if any.

        ``ctx.usage`` is the request's final usage (counted when the upstream reported none);
        this is only what was on the wire.
        """
        return usage_from(self._view())

    def reading(self) -> tuple[str, list[dict[str, Any]], tuple[str, ...]]:
        """``text``, ``tool_calls`` and the finish reasons given, read in one pass (a trace's)."""
        view = self._view()
        reasons = tuple(
            reason for choice in view.get("choices") or () if isinstance(choice, dict)
            if (reason := choice.get("finish_reason"))
        )
        return first_answer(view), _tool_calls(view), reasons

    @property
    def finish_reasons(self) -> list[str | None]:
        return [choice.get("finish_reason") for choice in self._view().get("choices") or () if isinstance(choice, dict)]

    @property
    def tool_calls(self) -> list[dict[str, Any]]:
        """The tool calls of every choice, in order."""
        return _tool_calls(self._view())


def _tool_calls(view: dict[str, Any]) -> list[dict[str, Any]]:
    calls: list[dict[str, Any]] = []
    for choice in view.get("choices") or ():
        message = choice.get("message") if isinstance(choice, dict) else None
        if isinstance(message, dict):
            calls.extend(call for call in message.get("tool_calls") or () if isinstance(call, dict))
    return calls


def tap_reply(ctx: RequestContext, reply: Reply) -> None:
    """Put the tap on ``reply`` and set ``ctx.answer`` (the upstream stage does, for every reply)."""
    if isinstance(reply, JsonReply):
        ctx.answer = Answer.of_json(reply.status, reply.body, reply.data)
    else:
        answer = ctx.answer = Answer(streamed=True, status=reply.status)
        reply.events = AnswerTap(reply.events, answer)


class AnswerTap:
    """An async iterator over a stream's events that hands each batch to ``answer`` as it passes.

    A class rather than an async generator: it adds one method call per batch, and closing it
    closes the upstream's iterator even if it was never started (the caller left before the
    first event), which is what releases the upstream connection.
    """

    __slots__ = ("_answer", "_events")

    def __init__(self, events: AsyncIterator[bytes], answer: Answer) -> None:
        self._events = events
        self._answer = answer

    def __aiter__(self) -> AnswerTap:
        return self

    async def __anext__(self) -> bytes:
        batch = await self._events.__anext__()
        self._answer.relayed(batch)
        return batch

    async def aclose(self) -> None:
        aclose = getattr(self._events, "aclose", None)
        if aclose is not None:
            await aclose()
