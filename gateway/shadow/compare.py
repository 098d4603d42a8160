"""How a shadow answer compares with the primary's: the numbers stored per copy.

    exact_match    the two answers' text is identical
    length_ratio   len(shadow) / len(primary), in characters (1.0 when both are empty)
    similarity     rapidfuzz's normalised Indel similarity in [0, 1] (1 - edits / total length)
    json_valid     with a JSON response_format: both answers parse as JSON (else None)
    schema_valid   with a json_schema response_format: both satisfy that schema (else None)
    tools_match    when either called tools: the same tool names, as many times each (else None)

The text compared is each answer's first choice (``Answer.text``: its content, or its first
tool call's arguments), the same text the evaluators judge. rapidfuzz runs in C++ in time
about linear in the length (bit-parallel), so a comparison costs microseconds for a normal
answer; it still runs off the request path (``gateway.shadow.runner``), and answers longer
than ``INLINE_CHARS`` are compared on a worker thread.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass
from typing import Any, Final

import orjson
from jsonschema.exceptions import SchemaError
from jsonschema.validators import validator_for
from rapidfuzz.distance import Indel

#: Answers up to this many characters (both together) are compared on the event loop.
INLINE_CHARS: Final = 16_384


@dataclass(frozen=True, slots=True)
class AnswerView:
    """What a comparison reads of one answer (taken from ``ctx.answer`` when the request ended)."""

    text: str
    tool_names: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Comparison:
    exact_match: bool
    length_ratio: float | None
    similarity: float
    json_valid: bool | None
    schema_valid: bool | None
    tools_match: bool | None

    def as_row(self) -> dict[str, Any]:
        return {
            "exact_match": self.exact_match,
            "length_ratio": self.length_ratio,
            "similarity": self.similarity,
            "json_valid": self.json_valid,
            "schema_valid": self.schema_valid,
            "tools_match": self.tools_match,
        }


def tool_names(calls: list[dict[str, Any]]) -> tuple[str, ...]:
    names = []
    for call in calls:
        function = call.get("function")
        name = function.get("name") if isinstance(function, dict) else None
        names.append(name if isinstance(name, str) else "")
    return tuple(names)


def compare(primary: AnswerView, shadow: AnswerView, response_format: Any = None) -> Comparison:
    """Compare ``shadow`` with ``primary`` under the request's ``response_format`` (if any)."""
    a, b = primary.text, shadow.text
    if a:
        ratio: float | None = round(len(b) / len(a), 6)
    else:
        ratio = 1.0 if not b else None  # nothing to divide by: only "both empty" has a ratio
    json_valid, schema_valid = _json_checks(a, b, response_format)
    tools_match = None
    if primary.tool_names or shadow.tool_names:
        tools_match = collections.Counter(primary.tool_names) == collections.Counter(shadow.tool_names)
    return Comparison(
        exact_match=a == b,
        length_ratio=ratio,
        similarity=round(Indel.normalized_similarity(a, b), 6),
        json_valid=json_valid,
        schema_valid=schema_valid,
        tools_match=tools_match,
    )


def _json_checks(a: str, b: str, response_format: Any) -> tuple[bool | None, bool | None]:
    kind = response_format.get("type") if isinstance(response_format, dict) else None
    if kind not in ("json_object", "json_schema"):
        return None, None
    parsed = [_parse(a), _parse(b)]
    json_valid = all(ok for ok, _ in parsed)
    if kind != "json_schema":
        return json_valid, None
    spec = response_format.get("json_schema")
    schema = spec.get("schema") if isinstance(spec, dict) else None
    if not isinstance(schema, dict):
        return json_valid, None
    if not json_valid:
        return False, False
    try:
        cls = validator_for(schema)
        cls.check_schema(schema)
        validator = cls(schema)
        return True, all(validator.is_valid(value) for _, value in parsed)
    except SchemaError:
        return True, None  # the caller's schema itself is broken: nothing to judge by


def _parse(text: str) -> tuple[bool, Any]:
    try:
        return True, orjson.loads(text)
    except orjson.JSONDecodeError:
        return False, None
