"""How a shadow answer is compared with the primary's."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from gateway.shadow.compare import AnswerView, compare, tool_names

SCHEMA = {
    "type": "json_schema",
    "json_schema": {
        "name": "x",
        "schema": {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]},
    },
}


def view(text: str, *tools: str) -> AnswerView:
    return AnswerView(text, tools)


def test_identical_answers_agree_in_every_respect() -> None:
    found = compare(view("same"), view("same"))
    assert (found.exact_match, found.length_ratio, found.similarity) == (True, 1.0, 1.0)
    assert (found.json_valid, found.schema_valid, found.tools_match) == (None, None, None)


def test_different_answers_have_a_length_ratio_and_a_similarity_below_one() -> None:
    found = compare(view("abcd"), view("abcdefgh"))
    assert not found.exact_match
    assert found.length_ratio == 2.0
    assert found.similarity == round(1 - 4 / 12, 6)  # Indel: 4 insertions over 12 characters
    assert compare(view(""), view("")).length_ratio == 1.0
    assert compare(view(""), view("x")).length_ratio is None


def test_json_answers_must_both_parse_and_satisfy_the_schema() -> None:
    assert compare(view('{"n": 1}'), view('{"n": 2}'), SCHEMA).schema_valid is True
    wrong_type = compare(view('{"n": 1}'), view('{"n": "two"}'), SCHEMA)
    assert (wrong_type.json_valid, wrong_type.schema_valid) == (True, False)
    broken = compare(view('{"n": 1}'), view('{"n": 1'), SCHEMA)
    assert (broken.json_valid, broken.schema_valid) == (False, False)
    mode = compare(view("[1]"), view("{}"), {"type": "json_object"})
    assert (mode.json_valid, mode.schema_valid) == (True, None)
    bad_schema = {"type": "json_schema", "json_schema": {"schema": {"type": "no-such-type"}}}
    assert compare(view("1"), view("1"), bad_schema).schema_valid is None


def test_tool_calls_match_by_name_and_count() -> None:
    assert compare(view("", "a", "b"), view("", "b", "a")).tools_match is True
    assert compare(view("", "a"), view("", "a", "a")).tools_match is False
    assert compare(view("text"), view("", "a")).tools_match is False
    calls: list[dict[str, Any]] = [{"function": {"name": "lookup"}}, {"function": {}}, {}]
    assert tool_names(calls) == ("lookup", "", "")


@given(st.text(max_size=200), st.text(max_size=200))
def test_any_pair_of_texts_compares_within_bounds(a: str, b: str) -> None:
    found = compare(view(a), view(b))
    assert 0.0 <= found.similarity <= 1.0
    assert found.exact_match == (a == b)
    assert (found.similarity == 1.0) == (a == b)
    assert found.length_ratio is None or found.length_ratio >= 0
