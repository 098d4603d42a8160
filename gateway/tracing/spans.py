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
input, output and error message pass through the secret scrubber, so no key that a caller or
an upstream echoed travels to Langfuse.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import orjson

from gateway.redact import SECRETS
from gateway.tracing import otlp

if TYPE_CHECKING:
    from gateway.context import RequestContext

#: Longest input or output sent (characters of JSON); longer ones are cut and say so.
MAX_FIELD_CHARS = 256 * 1024
_CUT = "…[cut by the gateway]"


def _json_field(value: Any) -> str:
    text = orjson.dumps(value).decode()
    if len(text) > MAX_FIELD_CHARS:
        text = text[:MAX_FIELD_CHARS] + _CUT
    return SECRETS.scrub(text)


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


def request_output(ctx: RequestContext) -> Any:
    """What was answered: the first choice as an assistant message (chat), or nothing (an error
    answer says its error in the status message)."""
    answer = ctx.answer
    if answer is None or answer.empty or answer.status >= 400 or ctx.endpoint.value != "chat":
        return None
    message: dict[str, Any] = {"role": "assistant", "content": answer.text}
    tool_calls = answer.tool_calls
    if tool_calls:
        message["tool_calls"] = tool_calls
        message["content"] = None
    return message


_METADATA: dict[str, str] = {}


def _metadata_key(name: str) -> str:
    key = _METADATA[name] = "langfuse.observation.metadata." + name
    return key


def failed(ctx: RequestContext) -> bool:
    return ctx.error is not None or ctx.status >= 400


def span_of(ctx: RequestContext, end_ns: int, *, environment: str) -> bytes:
    """The request's span, encoded (an OTLP ``Span``). ``ctx.trace_id`` is set (by the start hook)."""
    assert ctx.trace_id is not None
    elapsed = ctx.elapsed_seconds if ctx.elapsed_seconds is not None else 0.0
    alias = ctx.alias.name if ctx.alias is not None else (ctx.requested_model or "unknown")
    deployment = ctx.deployment
    attributes: list[otlp.Attribute] = [
        ("langfuse.observation.type", "generation"),
        ("langfuse.trace.name", ctx.prompt_name or alias),
        ("langfuse.environment", environment),
        ("gen_ai.operation.name", "chat" if ctx.endpoint.value == "chat" else "embeddings"),
        ("gen_ai.request.model", ctx.requested_model or alias),
    ]
    add = attributes.append
    if ctx.user:
        add(("user.id", ctx.user))
    if ctx.session_id:
        add(("session.id", ctx.session_id))
    if deployment is not None:
        add(("langfuse.observation.model.name", deployment.model))
        add(("gen_ai.response.model", deployment.model))
        add(("gen_ai.provider.name", deployment.provider))
    if ctx.prompt_name is not None and ctx.prompt_version is not None:
        add(("langfuse.observation.prompt.name", ctx.prompt_name))
        add(("langfuse.observation.prompt.version", ctx.prompt_version))
    given = request_input(ctx)
    if given is not None:
        add(("langfuse.observation.input", _json_field(given)))
    output = request_output(ctx)
    if output is not None:
        add(("langfuse.observation.output", _json_field(output)))
    usage = ctx.usage
    if usage is not None:
        add(("langfuse.observation.usage_details", orjson.dumps(
            {"input": usage.prompt_tokens, "output": usage.completion_tokens, "total": usage.total_tokens}
        ).decode()))
        add(("gen_ai.usage.input_tokens", usage.prompt_tokens))
        add(("gen_ai.usage.output_tokens", usage.completion_tokens))
    # The ledger's number, as is: a Langfuse cost equal to the ledger row's to the nano-dollar.
    add(("langfuse.observation.cost_details", orjson.dumps({"total": ctx.cost}).decode()))
    status_code, message = 0, ""
    if failed(ctx):
        message = SECRETS.scrub(str(ctx.error)) if ctx.error is not None else f"HTTP {ctx.status}"
        add(("langfuse.observation.level", "ERROR" if ctx.status != 499 else "WARNING"))
        add(("langfuse.observation.status_message", message))
        status_code = otlp.STATUS_ERROR
        if ctx.error is not None and ctx.error.code:
            add(("error.type", ctx.error.code))
    metadata: dict[str, str | int | float | bool | None] = {
        "request_id": ctx.request_id,
        "team": ctx.team,
        "key_id": ctx.principal.key_id if ctx.principal is not None else None,
        "alias": alias,
        "deployment": deployment.label if deployment is not None else None,
        "variant": ctx.variant,
        "rollout_id": ctx.rollout_id,
        "prompt_label": ctx.prompt_label,
        "cache_status": ctx.cache_status,
        "budget_status": ctx.budget_status,
        "fallback": bool(deployment is not None and ctx.deployments and deployment is not ctx.deployments[0]),
        "attempts": ctx.attempts,
        "status": ctx.status,
        "stream": ctx.stream,
        "origin": ctx.origin.value,
        "parent_request_id": ctx.parent_id,
        "error_code": ctx.error.code if ctx.error is not None else None,
        "latency_ms": round(elapsed * 1000, 3),
        "overhead_ms": round(ctx.overhead_seconds * 1000, 3),
        "saved_cost": ctx.saved_cost or None,
    }
    for key, value in metadata.items():
        if value is not None:
            add((_METADATA.get(key) or _metadata_key(key), value))
    return otlp.span(
        trace_id=bytes.fromhex(ctx.trace_id),
        span_id=os.urandom(8),
        name=f"{ctx.endpoint.value} {alias}",
        kind=otlp.SPAN_KIND_SERVER,
        start_ns=max(end_ns - int(elapsed * 1e9), 0),
        end_ns=end_ns,
        attributes_bytes=otlp.attributes(attributes, otlp.SPAN_ATTRIBUTE_TAG),
        status_code=status_code,
        status_message=message,
    )
