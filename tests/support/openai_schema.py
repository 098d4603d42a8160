"""Validate what the gateway returns against OpenAI's own response schemas.

The schemas come from ``tests/fixtures/openai_schemas.json``, extracted from OpenAI's OpenAPI description by
``tests/fixtures/extract_openai_schemas.py``, so the tests run without the shared spec. Usage::

    validate_response("CreateChatCompletionResponse", response.json())
    for chunk in chunks:
        validate_stream_chunk(chunk)

The spec is OpenAPI 3.1 (JSON Schema 2020-12) yet still marks many fields with OpenAPI 3.0's
``nullable: true``, which a JSON Schema validator ignores; ``convert_nullable`` rewrites those schemas so
that the ``null``s OpenAI really sends (``finish_reason`` in a chunk, ``usage`` before the last chunk) pass.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

from jsonschema import Draft4Validator, Draft202012Validator
from jsonschema.exceptions import ValidationError
from jsonschema.protocols import Validator
from referencing import Registry
from referencing.jsonschema import DRAFT4, DRAFT202012

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "openai_schemas.json"
_BASE_URI = "urn:openai-schemas"

# OpenAPI 3.1 schemas are JSON Schema 2020-12; 3.0 used an extended subset of draft 4 (wright-00).
_DIALECTS = {"3.1": (Draft202012Validator, DRAFT202012), "3.0": (Draft4Validator, DRAFT4)}

# Keywords whose value is a schema, a list of schemas, or a map of name -> schema. Everything else
# (enum, const, default, example, discriminator, x-*) is data and is left alone, even if it holds a
# key called "nullable".
_SCHEMA_KEYWORDS = {
    "additionalProperties", "contains", "contentSchema", "else", "if", "items", "not",
    "propertyNames", "then", "unevaluatedItems", "unevaluatedProperties",
}  # fmt: skip
_SCHEMA_LIST_KEYWORDS = {"allOf", "anyOf", "oneOf", "prefixItems"}
_SCHEMA_MAP_KEYWORDS = {"$defs", "definitions", "dependentSchemas", "patternProperties", "properties"}


@cache
def load_schemas() -> dict:
    """The fixture as stored (read once; do not mutate it).

    ``{"header": {"source", "openapi", "info_version", "extracted", ...}, "components": {"schemas": {...}}}``
    """
    return json.loads(FIXTURE.read_text(encoding="utf-8"))


def convert_nullable(schema: Any) -> Any:
    """Return a copy of ``schema`` with every OpenAPI 3.0 ``nullable`` turned into JSON Schema.

    ``{..., "nullable": true}`` becomes ``{"anyOf": [{...}, {"type": "null"}]}``. Wrapping, rather than
    adding ``"null"`` to ``type``, also works when the schema has an ``enum`` without ``null``, is only a
    ``$ref``, has a ``type`` list, or has no ``type`` at all. ``nullable: false`` is simply dropped.
    """
    if isinstance(schema, list):  # draft-4 tuple form of "items"
        return [convert_nullable(item) for item in schema]
    if not isinstance(schema, dict):  # true / false schemas
        return schema
    converted = {}
    for key, value in schema.items():
        if key == "nullable":
            continue
        if key in _SCHEMA_KEYWORDS:
            value = convert_nullable(value)
        elif key in _SCHEMA_LIST_KEYWORDS:
            value = [convert_nullable(item) for item in value]
        elif key in _SCHEMA_MAP_KEYWORDS:
            value = {name: convert_nullable(sub) for name, sub in value.items()}
        converted[key] = value
    if schema.get("nullable") is True:
        return {"anyOf": [converted, {"type": "null"}]}
    return converted


@cache
def _dialect_and_registry() -> tuple[type[Validator], Registry]:
    fixture = load_schemas()
    validator_class, specification = _DIALECTS[fixture["header"]["openapi"][:3]]
    schemas = fixture["components"]["schemas"]
    document = {"components": {"schemas": {name: convert_nullable(s) for name, s in schemas.items()}}}
    # The whole fixture is one resource, so "#/components/schemas/X" resolves against it.
    return validator_class, Registry().with_resource(_BASE_URI, specification.create_resource(document))


@cache
def _validator(schema_name: str) -> Validator:
    if schema_name not in load_schemas()["components"]["schemas"]:
        raise KeyError(f"{schema_name!r} is not in {FIXTURE.name}; add it to extract_openai_schemas.ROOTS")
    validator_class, registry = _dialect_and_registry()
    return validator_class({"$ref": f"{_BASE_URI}#/components/schemas/{schema_name}"}, registry=registry)


def validate_response(schema_name: str, instance: dict) -> None:
    """Assert that ``instance`` satisfies the named OpenAI schema, listing every error if it does not."""
    errors = sorted(_validator(schema_name).iter_errors(instance), key=lambda e: e.json_path)
    if errors:
        lines = [f"  {_describe(error)}" for error in errors]
        raise AssertionError(f"not a valid {schema_name} ({len(errors)} errors):\n" + "\n".join(lines))


def _describe(error: ValidationError) -> str:
    # An anyOf/oneOf failure (every nullable field) repeats the whole instance; name the deepest cause,
    # which is in the branch that matched best (not the {"type": "null"} one).
    if error.context:
        cause = max(error.context, key=lambda e: len(e.absolute_path))
        return f"{cause.json_path}: {cause.message} (in {error.validator} at {error.json_path})"
    return f"{error.json_path}: {error.message}"


def validate_stream_chunk(instance: dict) -> None:
    """Assert that one parsed ``data:`` payload of a chat completion stream is a valid chunk."""
    validate_response("CreateChatCompletionStreamResponse", instance)
