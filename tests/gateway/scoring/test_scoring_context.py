"""Where an answer's context comes from (issue 14, scope 2)."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from gateway.prompts.variables import VariablesValidator
from gateway.scoring.context import MAX_CONTEXT_CHARS, context_variable, passages_text, request_context

ROOT = Path(__file__).resolve().parents[3]


def support_answer() -> tuple[dict[str, object], dict[str, object]]:
    spec = yaml.safe_load((ROOT / "prompts/support-answer/prompt.yaml").read_text())
    case = json.loads((ROOT / "prompts/support-answer/golden.jsonl").read_text().splitlines()[0])
    return spec["variables"], case["variables"]


def test_the_support_answer_prompts_context_is_its_context_variable() -> None:
    schema, variables = support_answer()
    assert context_variable(schema) == "context"
    assert request_context({"model": "prompt:support-answer"}, schema, variables) == (
        "Refunds: Annual plans can be refunded within 30 days of purchase.\n\n"
        "Billing: Invoices are issued on the 1st of each month."
    )


def test_an_annotated_property_wins_over_the_default_name() -> None:
    schema = {"type": "object", "properties": {"context": {"type": "string"},
                                               "docs": {"type": "array", "x-scoring": "context"}}}
    assert context_variable(schema) == "docs"
    assert request_context({}, schema, {"context": "not this", "docs": ["A.", {"text": "B."}]}) == "A.\n\nB."
    assert context_variable({"type": "object", "properties": {"question": {"type": "string"}}}) is None
    assert context_variable(None) is None
    assert context_variable({"properties": []}) is None


def test_the_annotation_keeps_the_variables_fast_path() -> None:
    schema, variables = support_answer()
    schema["properties"]["context"]["x-scoring"] = "context"  # type: ignore[index]
    validator = VariablesValidator(schema)
    assert validator.compiled
    assert validator.problems(variables) == ()


def test_the_callers_own_context_comes_first() -> None:
    schema, variables = support_answer()
    body = {"scoring_context": [{"title": "Own", "text": "Retrieved by the caller."}, "  ", {"text": ""}, 7]}
    assert request_context(body, schema, variables) == "Own: Retrieved by the caller."
    assert request_context({"scoring_context": "Plain text."}) == "Plain text."
    assert request_context({"scoring_context": {"text": "One passage."}}) == "One passage."


def test_no_context_means_none() -> None:
    schema, _ = support_answer()
    assert request_context({}) is None
    assert request_context({}, schema, {"question": "Hi?"}) is None
    assert request_context({}, schema, {"context": []}) is None
    assert request_context({"scoring_context": "   "}, schema, {"context": ["x"]}) is None
    assert request_context({"scoring_context": 42}) is None


def test_context_is_bounded_by_whole_passages() -> None:
    big = "x" * (MAX_CONTEXT_CHARS // 2)
    text = passages_text([big, big, "never reached"])
    assert text == big
    assert passages_text("y" * (MAX_CONTEXT_CHARS + 10)) == "y" * MAX_CONTEXT_CHARS
