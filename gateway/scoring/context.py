"""Where an answer's context comes from (issue 14, scope 2): pure functions, no wiring.

Two sources, in this order:

1. **The caller's own retrieval results**, in the request field ``scoring_context`` (the
   gateway's field, like ``variables``: the wiring pops it before the request goes upstream). It
   is a string, or a list of passages, each a string or an object with ``text`` (and optionally
   ``title``, which is kept: the model saw it).
2. **The prompt's declared context variable.** A prompt marks it in its variables' JSON Schema
   with the annotation ``x-scoring: context`` on the property (JSON Schema ignores unknown
   keywords, so validation is unchanged); without a mark, a property named ``context`` is it.
   Its value takes the same shapes as above (``support-answer``'s ``context`` is a list of
   ``{title, text, url}``).

A request with neither has no context: it is not scored for groundedness, and the wiring counts
it. Passages are joined with blank lines; the result is bounded (``MAX_CONTEXT_CHARS``) and
passages past the bound are left out.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

#: The request field in which callers send their own retrieval results.
REQUEST_FIELD: Final = "scoring_context"
#: The JSON Schema annotation that marks a prompt's context variable, and its value.
SCHEMA_ANNOTATION: Final = "x-scoring"
ANNOTATION_VALUE: Final = "context"
#: The variable that is the context when no property carries the annotation.
DEFAULT_VARIABLE: Final = "context"
MAX_CONTEXT_CHARS: Final = 200_000
MAX_PASSAGES: Final = 256


def context_variable(schema: Mapping[str, Any] | None) -> str | None:
    """The name of the prompt's context variable, from its variables' JSON Schema (None: none)."""
    if not isinstance(schema, Mapping):
        return None
    properties = schema.get("properties")
    if not isinstance(properties, Mapping):
        return None
    for name, spec in properties.items():
        if isinstance(spec, Mapping) and spec.get(SCHEMA_ANNOTATION) == ANNOTATION_VALUE:
            return str(name)
    return DEFAULT_VARIABLE if DEFAULT_VARIABLE in properties else None


def passages_text(value: Any) -> str | None:
    """A context value as text: a string, or passages (strings or ``{title?, text}``); None if empty."""
    if isinstance(value, str):
        return value[:MAX_CONTEXT_CHARS] if value.strip() else None
    if isinstance(value, Mapping):
        value = [value]
    if not isinstance(value, list | tuple):
        return None
    parts: list[str] = []
    size = 0
    for passage in value[:MAX_PASSAGES]:
        text = _passage(passage)
        if not text:
            continue
        if size + len(text) > MAX_CONTEXT_CHARS:
            break
        parts.append(text)
        size += len(text) + 2
    return "\n\n".join(parts) if parts else None


def _passage(passage: Any) -> str | None:
    if isinstance(passage, str):
        return passage.strip() or None
    if isinstance(passage, Mapping):
        text = passage.get("text")
        if not isinstance(text, str) or not text.strip():
            return None
        title = passage.get("title")
        return f"{title.strip()}: {text.strip()}" if isinstance(title, str) and title.strip() else text.strip()
    return None


def request_context(body: Mapping[str, Any], schema: Mapping[str, Any] | None = None,
                    variables: Mapping[str, Any] | None = None) -> str | None:
    """The context an answer is scored against: the caller's ``scoring_context``, else the prompt's
    context variable among ``variables``; None when there is none (the request is not scored)."""
    if REQUEST_FIELD in body:
        return passages_text(body[REQUEST_FIELD])
    name = context_variable(schema)
    if name is None or not isinstance(variables, Mapping) or name not in variables:
        return None
    return passages_text(variables[name])
