"""A finished request as one OTLP span: a Langfuse generation, with the GenAI attributes too.

Langfuse reads OTLP spans by attribute (its OpenTelemetry attribute mapping): ``langfuse.*``
first, then the OpenTelemetry GenAI semantic conventions (``gen_ai.*``). The gateway sends
one span per request, the trace's only observation, typed ``generation``:

- trace: ``langfuse.trace.name`` (the prompt's name, else the alias), ``user.id`` (the caller's
  ``user`` field), ``session.id`` (``x-session-id``), ``langfuse.environment``;
- observation: model (the upstream model that served it), input (the messages as sent
  upstream, a rendered prompt included), output (the answer tap's first choice), usage and
  cost details (``ctx.cost``, the ledger's number), prompt name and version, level and status
  message, and metadata (team, key id, alias, deployment, variant, rollout, cache status...).

Everything here runs in the exporter's background task, never on the request path. The
input, output, error message and identifiers pass through the team's redaction policy
(``redaction``): no key that a caller or an upstream echoed travels, and personal data only as
the policy allows. The same span goes to any OTLP endpoint, so it carries the OpenTelemetry
GenAI attributes (``gen_ai.*``) beside Langfuse's.

A stream's time to first token is Langfuse's ``completion_start_time``: the moment its first
event was relayed (the answer tap notes it). A request that came with a W3C ``traceparent``
keeps that trace id and names the caller's span as its parent, so it joins the caller's trace.
A fork (a shadow copy) keeps its primary's trace id and names its primary's span as parent
(span ids are derived from trace and request ids, ``span_id_of``), so it is a child observation
of the primary's generation. A prompt's version is sent as the Langfuse version it was mirrored
to (``prompt_mirror``), so the generation links to it; until that is known, only the metadata
names the gateway's version.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import orjson

from gateway.tracing import otlp

if TYPE_CHECKING:
    from gateway.context import RequestContext
    from gateway.tracing.policy import TracePolicies
    from gateway.tracing.redaction import Content, Redactor

#: (prompt name, gateway version) -> the Langfuse version it became, or None while unknown.
PromptVersions = Callable[[str, int], int | None]

#: Longest input or output sent (characters of JSON); longer ones are cut and say so.
MAX_FIELD_CHARS = 256 * 1024
_CUT = "…[cut by the gateway]"


def _content(redactor: Redactor, value: Any, policy: Content) -> str | None:
    """``value`` (an input or output) as JSON text, redacted as ``policy`` says: string by
    string (the redactor remembers texts it saw before), or as one cut text past MAX_FIELD_CHARS.
    Under ``full``, a text in which there is nothing to scrub is sent as it is (``untouched``):
    no walk through its strings, no second serialisation."""
    if policy == "none":
        return None
    text = orjson.dumps(value).decode()
    if len(text) > MAX_FIELD_CHARS:
        return redactor.content(text[:MAX_FIELD_CHARS] + _CUT, policy)
    if redactor.untouched(text, policy):
        return text
    return orjson.dumps(redactor.structure(value, policy)).decode()


def request_input(ctx: RequestContext) -> Any:
    """What was asked: the messages (or embedding input) as sent upstream, else the raw body."""
    body = ctx.body
    if body:
        if "messages" in body:
            return body["messages"]
        if "input" in body:
            return body["input"]
        return body
    if ctx.raw_body:  # rejected before parsing: what the caller sent, as text
        return ctx.raw_body[:MAX_FIELD_CHARS].decode("utf-8", "replace")
    return None


def _metadata_key(name: str) -> str:
    return "langfuse.observation.metadata." + name


#: The metadata whose values repeat from request to request, in this order (``_metadata``).
_REPEATING_METADATA = tuple(_metadata_key(name) for name in (
    "team", "key_id", "alias", "deployment", "variant", "rollout_id", "prompt_version", "prompt_label",
    "cache_status", "budget_status", "fallback", "served_alias", "downgraded_from", "data_class", "attempts",
    "status", "stream", "origin", "error_code", "content_policy",
))
#: Distinct combinations of repeating attributes kept encoded (then the cache starts over).
_REPEATING_MAX = 1024
_REQUEST_ID, _PARENT_REQUEST_ID, _LATENCY_MS, _OVERHEAD_MS, _SAVED_COST = (_metadata_key(name) for name in (
    "request_id", "parent_request_id", "latency_ms", "overhead_ms", "saved_cost",
))


_COMPLETION_START = "langfuse.observation.completion_start_time"


def failed(ctx: RequestContext) -> bool:
    return ctx.error is not None or ctx.status >= 400


#: Request parameters reported as GenAI attributes (``gen_ai.request.*``).
_REQUEST_PARAMETERS = (
    ("max_tokens", "gen_ai.request.max_tokens"), ("max_completion_tokens", "gen_ai.request.max_tokens"),
    ("temperature", "gen_ai.request.temperature"), ("top_p", "gen_ai.request.top_p"),
    ("seed", "gen_ai.request.seed"), ("frequency_penalty", "gen_ai.request.frequency_penalty"),
    ("presence_penalty", "gen_ai.request.presence_penalty"),
)
_PARAMETER_NAMES = frozenset(parameter for parameter, _ in _REQUEST_PARAMETERS)


def span_id_of(trace_id: str, request_id: str) -> bytes:
    """A request's span id, derived from its trace and request ids: a fork (a shadow copy) names
    its primary's span as parent from the ``parent_id`` it carries, with nothing shared at run time."""
    return hashlib.blake2b(f"{trace_id}/{request_id}".encode(), digest_size=8).digest()


def _iso_json(ns: int) -> str:
    """A time as Langfuse's SDK sends ``completion_start_time``: a JSON string, ISO 8601."""
    return orjson.dumps(datetime.fromtimestamp(ns / 1e9, tz=UTC)).decode()  # orjson writes isoformat()'s text


@dataclass(slots=True)
class Finished:
    """What a request's span is made of, read off the request as it is recorded.

    The exporter holds this, not the request, until the span is built (in the next upstream
    call's spare time, or the export task's): a finished request is a few dozen objects that the
    collector's young collections would walk and promote meanwhile (groups of spans that held
    sixteen requests cost more CPU in collections than they saved, ``benchmarks/README.md``).
    Everything here is a string, a number or a tuple of them, but the input (the messages as
    sent upstream) and the answer's tool calls, which the span sends.
    """

    head: tuple[Any, ...]  # the repeating head: ``SpanBuilder._head``'s key
    repeating: tuple[Any, ...]  # the repeating metadata: ``_REPEATING_METADATA``'s values
    trace_id: str
    request_id: str
    parent_span_id: bytes
    name: str
    start_ns: int
    end_ns: int
    content: Content
    user: str | None
    session_id: str | None
    given: Any  # request_input()
    output: tuple[str, list[dict[str, Any]]] | None  # (text, tool calls) of a chat answer
    completion_start_ns: int | None  # a stream's first event
    finish_reasons: tuple[str, ...]
    usage: tuple[int, int, int] | None  # prompt, completion, total tokens
    cost: float
    failure: tuple[str, str, str | None] | None  # (message, level, error type) of a failed request
    latency_ms: float
    overhead_ms: float
    parent_request_id: str | None
    saved_cost: float


class SpanBuilder:
    """Turns a finished request into its encoded span, with the team's redaction policy."""

    def __init__(
        self,
        *,
        environment: str,
        redactor: Redactor,
        policies: TracePolicies,
        prompt_versions: PromptVersions | None = None,
    ) -> None:
        self.environment = environment
        self.redactor = redactor
        self.policies = policies
        # None: prompts are not mirrored, the gateway's version is the one to name.
        self.prompt_versions = prompt_versions
        # The values of a span's repeating head or metadata -> their attributes, encoded (a
        # head's key and a metadata's key are tuples of different lengths: they never meet).
        self._repeating: dict[tuple[object, ...], bytes] = {}

    def build(self, ctx: RequestContext, end_ns: int) -> bytes:
        """The request's span, encoded (an OTLP ``Span``): ``encode(take(...))``."""
        return self.encode(self.take(ctx, end_ns))

    def take(self, ctx: RequestContext, end_ns: int, content: Content | None = None) -> Finished:
        """What ``ctx``'s span needs, read off it now (``content``: its policy's, if known).
        ``ctx.trace_id`` is set (by the start hook). Reads only: no redaction, no encoding."""
        assert ctx.trace_id is not None
        if content is None:
            content = self.policies.of(ctx).content
        elapsed = ctx.elapsed_seconds if ctx.elapsed_seconds is not None else 0.0
        start_ns = max(end_ns - int(elapsed * 1e9), 0)
        alias = ctx.alias.name if ctx.alias is not None else (ctx.requested_model or "unknown")
        deployment = ctx.deployment
        chat = ctx.endpoint == "chat"
        operation = "chat" if chat else "embeddings"
        body = ctx.body
        parameters = tuple(
            (name, value, type(value)) for parameter, name in _REQUEST_PARAMETERS
            if type(value := body.get(parameter)) is int or type(value) is float
        ) if body and not _PARAMETER_NAMES.isdisjoint(body) else ()
        # What repeats from request to request (the deployment, the parameters, the prompt) is
        # encoded once per combination, as the metadata is (``_metadata``).
        head = (
            operation, ctx.requested_model or alias,
            # A fork is an observation in its primary's trace: it names no trace.
            None if ctx.parent_id is not None else ctx.prompt_name or alias,
            deployment.model if deployment is not None else None,
            deployment.provider if deployment is not None else None,
            parameters, self._prompt(ctx),
        )
        answer = ctx.answer
        output: tuple[str, list[dict[str, Any]]] | None = None
        completion_start_ns: int | None = None
        finish_reasons: tuple[str, ...] = ()
        if answer is not None:
            first_at = answer.first_at
            if first_at is not None:  # a stream's first event: the time to first token
                completion_start_ns = start_ns + int(max(first_at - ctx.started, 0.0) * 1e9)
            if chat and not answer.empty and answer.status < 400:
                text, tool_calls, finish_reasons = answer.reading()
                if content != "none":
                    output = (text, tool_calls)
        usage = ctx.usage
        failure: tuple[str, str, str | None] | None = None
        error = ctx.error
        if failed(ctx):
            failure = (
                str(error) if error is not None else f"HTTP {ctx.status}",
                "ERROR" if ctx.status != 499 else "WARNING",
                error.code if error is not None and error.code else "cancelled" if ctx.status == 499 else None,
            )
        if ctx.parent_span_id:  # the caller's span (traceparent)
            parent = bytes.fromhex(ctx.parent_span_id)
        elif ctx.parent_id is not None:  # a fork: its primary's span
            parent = span_id_of(ctx.trace_id, ctx.parent_id)
        else:
            parent = b""
        return Finished(
            head=head,
            repeating=self._repeating_metadata(ctx, alias, content),
            trace_id=ctx.trace_id,
            request_id=ctx.request_id,
            parent_span_id=parent,
            name=f"{operation} {alias}",
            start_ns=start_ns,
            end_ns=end_ns,
            content=content,
            user=ctx.user,
            session_id=ctx.session_id,
            given=request_input(ctx) if content != "none" else None,
            output=output,
            completion_start_ns=completion_start_ns,
            finish_reasons=finish_reasons,
            usage=(usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) if usage is not None else None,
            cost=ctx.cost,
            failure=failure,
            latency_ms=elapsed * 1000,
            overhead_ms=ctx.overhead_seconds * 1000,
            parent_request_id=ctx.parent_id,
            saved_cost=ctx.saved_cost,
        )

    def encode(self, finished: Finished) -> bytes:
        """``finished``'s span, redacted and encoded (an OTLP ``Span``)."""
        content = finished.content
        redactor = self.redactor
        head_key = finished.head
        head = self._repeating.get(head_key)
        if head is None:
            head = self._remember(head_key, otlp.attributes(self._head(head_key), otlp.SPAN_ATTRIBUTE_TAG))
        attributes: list[otlp.Attribute] = []  # values that repeat: encoded once per value
        add = attributes.append
        # Values new on every request (the input and output, a stream's start): encoded each time
        # and never kept among the repeating encodings, which would fill with one entry per
        # request until they start over, evicting what does repeat.
        unique: list[otlp.Attribute] = []
        if finished.user:
            add(("user.id", redactor.identifier(finished.user, content)))
        if finished.session_id:
            session = redactor.identifier(finished.session_id, content)
            add(("session.id", session))
            add(("gen_ai.conversation.id", session))
        given = finished.given
        if given is not None:
            text = _content(redactor, given, content)
            if text is not None:
                unique.append(("langfuse.observation.input", text))
        if finished.output is not None:
            answer_text, tool_calls = finished.output
            message: dict[str, Any] = {"role": "assistant", "content": answer_text}
            if tool_calls:
                message["tool_calls"] = tool_calls
                message["content"] = None
            text = _content(redactor, message, content)
            if text is not None:
                unique.append(("langfuse.observation.output", text))
        if finished.completion_start_ns is not None:
            unique.append((_COMPLETION_START, _iso_json(finished.completion_start_ns)))
        if finished.finish_reasons:
            add(("gen_ai.response.finish_reasons", list(finished.finish_reasons)))
        usage = finished.usage
        if usage is not None:
            add(("langfuse.observation.usage_details", orjson.dumps(
                {"input": usage[0], "output": usage[1], "total": usage[2]}
            ).decode()))
            add(("gen_ai.usage.input_tokens", usage[0]))
            add(("gen_ai.usage.output_tokens", usage[1]))
        # The ledger's number, as is: a Langfuse cost equal to the ledger row's to the nano-dollar.
        add(("langfuse.observation.cost_details", orjson.dumps({"total": finished.cost}).decode()))
        status_code, message_text = 0, ""
        if finished.failure is not None:
            raw, level, error_type = finished.failure
            message_text = redactor.content(raw, "mask" if content == "none" else content) or ""
            add(("langfuse.observation.level", level))
            add(("langfuse.observation.status_message", message_text))
            status_code = otlp.STATUS_ERROR
            if error_type is not None:
                add(("error.type", error_type))
        return otlp.span(
            trace_id=bytes.fromhex(finished.trace_id),
            span_id=span_id_of(finished.trace_id, finished.request_id),
            parent_span_id=finished.parent_span_id,
            name=finished.name,
            kind=otlp.SPAN_KIND_SERVER,
            start_ns=finished.start_ns,
            end_ns=finished.end_ns,
            attributes_bytes=(
                head + otlp.attributes(attributes, otlp.SPAN_ATTRIBUTE_TAG) + self._metadata(finished, unique)
            ),
            status_code=status_code,
            status_message=message_text,
        )

    def _head(self, key: tuple[Any, ...]) -> list[otlp.Attribute]:
        """The attributes of a span's repeating head (``build``'s ``head_key``)."""
        operation, requested, trace_name, model, provider, parameters, prompt = key
        attributes: list[otlp.Attribute] = [
            ("langfuse.observation.type", "generation"),
            ("langfuse.environment", self.environment),
            ("gen_ai.operation.name", operation),
            ("gen_ai.request.model", requested),
        ]
        if trace_name is not None:
            attributes.append(("langfuse.trace.name", trace_name))
        if model is not None:
            attributes += [("langfuse.observation.model.name", model), ("gen_ai.response.model", model),
                           ("gen_ai.provider.name", provider)]
        attributes += [(name, value) for name, value, _ in parameters]
        if prompt is not None:
            attributes += [("langfuse.observation.prompt.name", prompt[0]),
                           ("langfuse.observation.prompt.version", prompt[1])]
        return attributes

    def _remember(self, key: tuple[Any, ...], encoded: bytes) -> bytes:
        if len(self._repeating) >= _REPEATING_MAX:
            self._repeating.clear()
        self._repeating[key] = encoded
        return encoded

    def _prompt(self, ctx: RequestContext) -> tuple[str, int] | None:
        """The prompt (name, version) the generation links to, if any."""
        name, version = ctx.prompt_name, ctx.prompt_version
        if name is None or version is None:
            return None
        linked: int | None = version
        if self.prompt_versions is not None:
            linked = self.prompt_versions(name, version)
        return (name, linked) if linked is not None else None

    def _repeating_metadata(self, ctx: RequestContext, alias: str, content: Content) -> tuple[Any, ...]:
        """The metadata's values that repeat from request to request (``_REPEATING_METADATA``)."""
        deployment = ctx.deployment
        return (
            ctx.team,
            ctx.principal.key_id if ctx.principal is not None else None,
            alias,
            deployment.label if deployment is not None else None,
            ctx.variant,
            ctx.rollout_id,
            ctx.prompt_version,  # the gateway's (the link names Langfuse's)
            ctx.prompt_label,
            ctx.cache_status,
            ctx.budget_status,
            bool(deployment is not None and ctx.deployments and deployment is not ctx.deployments[0]),
            # The alias whose deployment answered differs from ``alias`` after a fallback across
            # aliases; ``downgraded_from`` names the alias asked for when a budget downgrade
            # replaced it. Both as on the ledger row.
            deployment.alias if deployment is not None and deployment.alias != alias else None,
            ctx.downgraded_from,
            ctx.data_class,
            ctx.attempts,
            ctx.status,
            ctx.stream,
            ctx.origin,  # a StrEnum: encoded as its value
            ctx.error.code if ctx.error is not None else None,
            content if content != "full" else None,
        )

    def _metadata(self, finished: Finished, unique: list[otlp.Attribute]) -> bytes:
        """The metadata attributes, encoded: those that repeat from request to request (team,
        alias, deployment, status...) encoded once per combination (one lookup instead of ~20
        attributes to encode: a quarter of a span's cost), the rest each time, in one call with
        ``unique`` (the span's other values new on every request)."""
        repeating = finished.repeating
        encoded = self._repeating.get(repeating)
        if encoded is None:
            encoded = self._remember(repeating, otlp.attributes(
                [(key, value) for key, value in zip(_REPEATING_METADATA, repeating, strict=True) if value is not None],
                otlp.SPAN_ATTRIBUTE_TAG,
            ))
        varying = unique
        varying += [
            (_REQUEST_ID, finished.request_id),
            (_LATENCY_MS, round(finished.latency_ms, 3)),
            (_OVERHEAD_MS, round(finished.overhead_ms, 3)),
        ]
        if finished.parent_request_id is not None:
            varying.append((_PARENT_REQUEST_ID, finished.parent_request_id))
        if finished.saved_cost:
            varying.append((_SAVED_COST, finished.saved_cost))
        return encoded + otlp.attributes(varying, otlp.SPAN_ATTRIBUTE_TAG, repeating=False)
