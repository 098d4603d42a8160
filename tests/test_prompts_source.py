"""Prompt source files, templates, variables and expectations, without a server.

Every refused file must say where and why (file, line, field), the canonical content must
not depend on formatting, the sandbox must hold, and the fast variables check must agree with
the reference validator.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.prompts.evals import CaseOutcome, default_evaluators
from gateway.prompts.render import RenderError, compile_prompt
from gateway.prompts.source import (
    PromptSource,
    SourceError,
    load_source,
    parse_source,
    render_source,
    spec_from_content,
)
from gateway.prompts.variables import VariablesValidator

REPO = Path(__file__).resolve().parents[1]
EVALUATORS = default_evaluators()
MODELS = {"mock": "chat", "mock-embed": "embedding"}

GOOD = """\
name: greet
model: mock
parameters: {temperature: 0.5}
variables:
  type: object
  required: [who]
  properties:
    who: {type: string}
messages:
  - role: system
    content: Be kind.
  - role: user
    content: "Say hello to {{ who }}"
golden:
  - {name: one, variables: {who: Ada}, expect: {contains: Ada}}
"""


def parse(text: str) -> PromptSource:
    return parse_source(text, "greet.yaml", evaluators=EVALUATORS, model_kinds=MODELS)


def problems_of(text: str) -> list[str]:
    with pytest.raises(SourceError) as info:
        parse(text)
    return info.value.problems


def test_the_shipped_examples_are_valid() -> None:
    names = set()
    for path in (REPO / "prompts" / "support-answer", REPO / "prompts" / "summarise.yaml",
                 REPO / "prompts" / "support-triage"):
        source = load_source(path, evaluators=EVALUATORS, model_kinds=MODELS)
        assert source.spec.model == "mock", "the quick start must work offline"
        assert len(source.spec.golden) >= 2, f"{path.name} ships a golden dataset"
        assert source.spec.dataset is None, "the dataset is folded into the version"
        names.add(source.spec.name)
    assert names == {"support-answer", "summarise", "support-triage"}


def test_canonical_content_ignores_formatting_and_comments() -> None:
    a = parse(GOOD)
    reformatted = "# a comment\n" + GOOD.replace("parameters: {temperature: 0.5}", "parameters:\n  temperature: 0.5")
    b = parse(reformatted)
    assert a.sha256 == b.sha256 and a.content == b.content
    c = parse(GOOD.replace("Be kind.", "Be very kind."))
    assert c.sha256 != a.sha256
    # The stored content reads back into the same document.
    assert spec_from_content(a.content) == a.spec


def test_invalid_yaml_names_the_line() -> None:
    [problem] = problems_of("name: x\nmodel: mock\nmessages:\n  - role: user\n    content: [unclosed\n")
    assert problem.startswith("greet.yaml:") and "invalid YAML" in problem


def test_schema_errors_name_file_line_and_field() -> None:
    problems = problems_of(GOOD.replace("  - role: system\n", "  - role: robot\n").replace("model: mock\n", ""))
    joined = "\n".join(problems)
    assert "greet.yaml:1: model: Field required" in joined
    assert "greet.yaml:9: messages.0.role: Input should be 'system'" in joined
    assert problems_of(GOOD.replace("name: greet", "name: greet\ncolour: blue"))[0].startswith(
        "greet.yaml:2: colour: Extra inputs are not permitted")


def test_duplicate_keys_are_refused() -> None:
    assert "duplicate key 'model'" in problems_of(GOOD.replace("model: mock\n", "model: mock\nmodel: other\n"))[0]


def test_template_syntax_error() -> None:
    [problem] = problems_of(GOOD.replace('"Say hello to {{ who }}"', '"Say hello to {{ who }"'))
    assert problem == ("greet.yaml:13: messages[1].content: template syntax error (line 1 of the template): "
                       "unexpected '}'")


def test_variables_used_must_be_declared() -> None:
    [problem] = problems_of(GOOD.replace("{{ who }}", "{{ who }} from {{ place }}"))
    assert "messages[1].content: uses the variable 'place', which variables.properties does not declare" in problem


def test_declared_but_unused_variables_only_warn() -> None:
    source = parse(GOOD.replace("    who: {type: string}\n", "    who: {type: string}\n    mood: {type: string}\n"))
    assert any("variables.properties.mood is declared but no template uses it" in w for w in source.warnings)


def test_variables_schema_must_be_a_valid_object_schema() -> None:
    problems = problems_of(GOOD.replace("  type: object\n", "  type: objekt\n"))
    assert any("variables: not a valid JSON Schema" in p for p in problems)
    assert any("`type: object`" in p for p in problems)
    assert any("variables.required: 'ghost' is not in properties" in p
               for p in problems_of(GOOD.replace("required: [who]", "required: [who, ghost]")))


def test_model_alias_must_exist_and_chat() -> None:
    assert "unknown model alias 'gpt-9'" in problems_of(GOOD.replace("model: mock", "model: gpt-9"))[0]
    assert "is an embedding model" in problems_of(GOOD.replace("model: mock", "model: mock-embed"))[0]


def test_golden_cases_are_checked_at_push() -> None:
    bad_vars = problems_of(GOOD.replace("variables: {who: Ada}", "variables: {who: 7}"))
    assert bad_vars == ["greet.yaml: golden[0] (one): variables.who: 7 is not of type 'string'"]
    missing = problems_of(GOOD.replace("variables: {who: Ada}", "variables: {}"))
    assert missing == ["greet.yaml: golden[0] (one): variables.who: the required variable 'who' is missing"]
    unknown = problems_of(GOOD.replace("expect: {contains: Ada}", "expect: {smells_like: Ada}"))
    assert "expect.smells_like: unknown expectation" in unknown[0]
    bad_regex = problems_of(GOOD.replace("expect: {contains: Ada}", "expect: {regex: '(unclosed'}"))
    assert "expect.regex: invalid regular expression" in bad_regex[0]


def test_golden_case_that_fails_to_render_is_refused() -> None:
    text = GOOD.replace("{{ who }}", "{{ who }} {{ 10 // n }}").replace(
        "    who: {type: string}\n", "    who: {type: string}\n    n: {type: integer}\n"
    ).replace("variables: {who: Ada}", "variables: {who: Ada, n: 0}")
    [problem] = problems_of(text)
    assert "golden[0] (one): messages fails to render" in problem and "ZeroDivisionError" in problem


def test_dataset_file_is_folded_in_with_line_numbers(tmp_path: Path) -> None:
    (tmp_path / "p.yaml").write_text(GOOD.replace("golden:\n  - {name: one, variables: {who: Ada}, expect: "
                                                  "{contains: Ada}}\n", "dataset: cases.jsonl\n"))
    (tmp_path / "cases.jsonl").write_text('{"variables": {"who": "Bo"}, "expect": {"contains": "Bo"}}\n\n'
                                          '{"variables": {"who": "Cy"}, "expect": {"contains": "Cy"}}\n')
    source = load_source(tmp_path / "p.yaml", evaluators=EVALUATORS, model_kinds=MODELS)
    assert [case.variables["who"] for case in source.spec.golden] == ["Bo", "Cy"]
    (tmp_path / "cases.jsonl").write_text('{"variables": {"who": "Bo"}, "expect": {"contains": "Bo"}}\n{oops\n')
    with pytest.raises(SourceError) as info:
        load_source(tmp_path / "p.yaml", evaluators=EVALUATORS, model_kinds=MODELS)
    assert info.value.problems[0].startswith(f"{tmp_path / 'cases.jsonl'}:2: invalid JSON")
    with pytest.raises(SourceError, match="dataset: a file cannot be read here"):
        parse(GOOD + "dataset: cases.jsonl\n")


def test_text_prompts_render_to_one_user_message() -> None:
    source = parse('name: t\ntype: text\nmodel: mock\nvariables: {type: object, properties: {x: {type: string}}}\n'
                   'template: "Echo {{ x }}"\n')
    compiled = compile_prompt(source.spec.message_templates())
    assert compiled.render({"x": "hi"}) == [{"role": "user", "content": "Echo hi"}]
    text_with_messages = "name: t\ntype: text\nmodel: mock\nmessages: [{role: user, content: x}]\n"
    assert "needs `template`" in problems_of(text_with_messages)[0]


def test_render_is_strict_and_sandboxed() -> None:
    compiled = compile_prompt([("system", "static text"), ("user", "{{ a.b }} and {{ ''.__class__.__mro__ }}")])
    assert compiled.parts[0] == "static text", "a message without Jinja syntax is not a template"
    with pytest.raises(RenderError, match="messages\\[1\\]"):
        compiled.render({"a": {"b": 1}})  # the sandbox refuses the dunder walk
    with pytest.raises(RenderError, match="undefined value"):
        compile_prompt([("user", "{{ a.missing }}")]).render({"a": {}})
    # Attribute syntax on a caller's JSON object reads its keys, like subscripts do.
    assert compile_prompt([("user", "{{ p.title }}/{{ p['title'] }}/{{ p.items is defined }}")]).render(
        {"p": {"title": "T"}})[0]["content"] == "T/T/True"


def test_render_source_is_stable_yaml() -> None:
    spec = parse(GOOD.replace('"Say hello to {{ who }}"', '"line one\\nline two {{ who }}"')).spec
    text = render_source(spec)
    assert "content: |-\n    line one\n    line two {{ who }}" in text
    assert render_source(spec) == text


@pytest.mark.parametrize(
    ("expect", "outcome", "passed"),
    [
        ({"contains": ["refund", "30 days"]}, "refund within 30 days", True),
        ({"contains": "refund"}, "no money back", False),
        ({"not_contains": ["{{"]}, "clean", True),
        ({"not_contains": "sorry"}, "sorry!", False),
        ({"regex": "^Mock answer"}, "Mock answer: x", True),
        ({"regex": "^x$"}, "xy", False),
        ({"json_schema": {"type": "object", "required": ["a"]}}, '{"a": 1}', True),
        ({"json_schema": {"type": "object", "required": ["a"]}}, '{"b": 1}', False),
        ({"json_schema": {"type": "object"}}, "not json", False),
        ({"max_cost_usd": 0.01}, "", True),
        ({"max_latency_ms": 1}, "", False),
    ],
)
def test_expectations(expect: dict[str, object], outcome: str, passed: bool) -> None:
    assert EVALUATORS.problems(expect) == []
    checks = asyncio.run(EVALUATORS.evaluate(expect, CaseOutcome(outcome, cost_usd=0.001, latency_ms=5.0, status=200)))
    assert [check.passed for check in checks] == [passed]
    assert checks[0].detail


def test_partial_contains_scores_partially() -> None:
    [check] = asyncio.run(EVALUATORS.evaluate({"contains": ["a", "b"]}, CaseOutcome("a", 0, 0, 200)))
    assert not check.passed and check.score == 0.5 and "missing ['b']" in check.detail


SCHEMA = {
    "type": "object",
    "required": ["question", "context"],
    "additionalProperties": False,
    "properties": {
        "question": {"type": "string", "minLength": 1, "maxLength": 20},
        "context": {"type": "array", "minItems": 1, "items": {"type": "object", "required": ["text"],
                                                             "properties": {"text": {"type": "string"}}}},
        "n": {"type": "integer", "minimum": 0, "maximum": 5},
        "mode": {"enum": ["a", "b"]},
    },
}
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-10, 10) | st.floats(-10, 10, allow_nan=False) | st.text(max_size=25),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(
        st.sampled_from(["question", "context", "n", "mode", "text", "other"]), children, max_size=5),
    max_leaves=12,
)


@settings(max_examples=150, deadline=None)
@given(JSON_VALUES)
def test_fast_variables_check_agrees_with_jsonschema(instance: object) -> None:
    from jsonschema import Draft202012Validator

    validator = VariablesValidator(SCHEMA)
    assert validator.compiled, "this schema uses only shared keywords: the fast path must be on"
    assert (validator.problems(instance) == ()) == Draft202012Validator(SCHEMA).is_valid(instance)


def test_schemas_outside_the_shared_dialect_use_jsonschema_alone() -> None:
    schema = {"type": "object", "properties": {"p": {"type": "array", "prefixItems": [{"type": "string"}]}}}
    validator = VariablesValidator(schema)
    assert not validator.compiled
    assert validator.problems({"p": [1]}) == (("variables.p[0]", "1 is not of type 'string'"),)
    assert validator.problems({"p": ["ok"]}) == ()
