"""Checking a caller's ``variables`` against the prompt's JSON Schema on every request, cheaply.

``jsonschema`` is the reference: prompts are validated with it at push time and it writes the
error messages (every problem, each naming its variable). But it walks the schema dynamically
and costs tens to hundreds of microseconds per request, which the resolve budget (<= 50 µs)
cannot afford. So a schema whose keywords mean the same in draft-07 and 2020-12 (nearly every
variables schema: types, properties, required, enums, lengths, ranges, patterns, items) is also
compiled with ``fastjsonschema`` into plain Python, which decides the common case, valid
variables, in a few microseconds. Whatever it rejects is re-checked with ``jsonschema``, which
has the last word: a rejection it does not confirm is not a rejection. Schemas using anything
else (``$ref``, ``prefixItems``, ``unevaluatedProperties``...) are checked by ``jsonschema`` alone.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import fastjsonschema
from jsonschema.validators import validator_for

from gateway.prompts.source import variable_error

# Keywords with the same meaning in draft-07 (fastjsonschema) and 2020-12 (jsonschema's default),
# plus pure annotations (both ignore the gateway's own `x-` ones). `format` is an annotation in
# both as configured (no format assertion).
_SHARED_KEYWORDS = frozenset({
    "type", "enum", "const", "properties", "required", "additionalProperties", "patternProperties",
    "propertyNames", "minProperties", "maxProperties", "items", "minItems", "maxItems", "uniqueItems",
    "contains", "minLength", "maxLength", "pattern", "minimum", "maximum", "exclusiveMinimum",
    "exclusiveMaximum", "multipleOf", "anyOf", "oneOf", "allOf", "not",
    "title", "description", "default", "examples", "$comment", "format", "deprecated", "readOnly", "writeOnly",
    "x-scoring",  # marks the context variable that answers are scored against (gateway/scoring/context.py)
})
_SCHEMA_MAPS = ("properties", "patternProperties")
_SCHEMA_VALUES = ("additionalProperties", "items", "propertyNames", "contains", "not")
_SCHEMA_LISTS = ("anyOf", "oneOf", "allOf")

NO_PROBLEMS: tuple[tuple[str, str], ...] = ()


def _shared_dialect(schema: Any) -> bool:
    """True when every keyword, at every depth, is one both validators read the same way."""
    if isinstance(schema, bool):
        return True
    if not isinstance(schema, dict) or not _SHARED_KEYWORDS.issuperset(schema):
        return False
    for key in _SCHEMA_MAPS:
        value = schema.get(key, {})
        if not isinstance(value, dict) or not all(_shared_dialect(sub) for sub in value.values()):
            return False
    for key in _SCHEMA_VALUES:
        if key in schema and not _shared_dialect(schema[key]):  # `items` as a list (tuples) is excluded here
            return False
    for key in _SCHEMA_LISTS:
        value = schema.get(key, [])
        if not isinstance(value, list) or not all(_shared_dialect(sub) for sub in value):
            return False
    return True


class VariablesValidator:
    """One prompt version's schema, compiled once; ``problems`` is what a request calls."""

    def __init__(self, schema: dict[str, Any]) -> None:
        self._reference = validator_for(schema)(schema)
        self._fast: Callable[[Any], Any] | None = None
        if _shared_dialect(schema):
            try:
                self._fast = fastjsonschema.compile(schema, use_default=False, use_formats=False)
            except fastjsonschema.JsonSchemaDefinitionException:
                self._fast = None  # e.g. a pattern it cannot translate: the reference copes alone

    @property
    def compiled(self) -> bool:
        """Whether the fast path is in use (for tests and diagnostics)."""
        return self._fast is not None

    def problems(self, variables: Any) -> tuple[tuple[str, str], ...]:
        """``(param, message)`` per problem, sorted; empty when the variables are valid."""
        if self._fast is not None:
            try:
                self._fast(variables)
                return NO_PROBLEMS
            except fastjsonschema.JsonSchemaValueException:
                pass  # let the reference confirm it and describe every problem
        elif self._reference.is_valid(variables):
            return NO_PROBLEMS
        return tuple(sorted(variable_error(error) for error in self._reference.iter_errors(variables)))
