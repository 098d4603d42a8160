"""``gateway hallucination score FILE.jsonl`` (issue 14, scope 6), run in process.

Also the case file format it reads (gateway/scoring/cases.py): bad lines fail with
``FILE:LINE: problem`` and exit 1 before anything is scored.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from gateway.cli import app as cli_app
from gateway.scoring.cases import CaseFileError, parse_cases

CONTEXT = [
    "Refunds: annual plans can be refunded within 30 days of purchase.",
    {"title": "Billing", "text": "Invoices are issued on the 1st of each month."},
]
CASES = [
    {
        "id": "faithful",
        "context": CONTEXT,
        "question": "Refund?",
        "answer": "Annual plans are refundable for 30 days.",
        "label": "grounded",
    },
    {
        "context": "Annual plans can be refunded within 30 days.",
        "question": "Refund?",
        "answer": "Annual plans can be refunded within 60 days.",
        "label": "hallucinated",
        "category": "number_swap",
    },
    {"context": "", "answer": "The office is in Berlin."},
    {"context": CONTEXT, "answer": "The passages do not say whether monthly plans can be refunded."},
]


def run(*args: str, stdin: str | None = None) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli_app, ["hallucination", "score", *args], input=stdin)
    return result.exit_code, result.stdout, result.stderr


def write(tmp_path: Path, lines: list[str]) -> str:
    path = tmp_path / "cases.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def test_json_output_is_one_object_per_input_line_in_order(tmp_path: Path) -> None:
    code, out, _ = run(write(tmp_path, [json.dumps(case) for case in CASES]), "--format", "json")
    assert code == 0
    rows = [json.loads(line) for line in out.splitlines()]
    assert [row["line"] for row in rows] == [1, 2, 3, 4]
    assert [row["label"] for row in rows] == ["grounded", "hallucinated", "hallucinated", "grounded"]
    assert [row["score"] for row in rows] == [0.0, 1.0, 1.0, 0.0]
    assert rows[0]["id"] == "faithful" and "id" not in rows[1]
    assert rows[1]["expected"] == "hallucinated" and "expected" not in rows[2]
    assert rows[1]["claims"] == [
        {
            "text": "Annual plans can be refunded within 60 days.",
            "verdict": "unsupported",
            "reasons": ["number '60 days' not in context"],
        }
    ]
    assert rows[3]["claims"][0]["verdict"] == "abstention"
    assert all(row["evaluator"] == "groundedness" and row["threshold"] == 0.0 for row in rows)


def test_the_table_shows_labels_reasons_and_accuracy_on_labelled_cases(tmp_path: Path) -> None:
    code, out, _ = run(write(tmp_path, [json.dumps(case) for case in CASES]))
    assert code == 0
    assert "faithful" in out and "hallucinated" in out and "number '60 days' not in context" in out
    assert "2 labelled cases: precision 1.000, recall 1.000, F1 1.000" in out


def test_standard_input_and_blank_lines(tmp_path: Path) -> None:
    code, out, _ = run("-", "--format", "json", stdin="\n" + json.dumps(CASES[1]) + "\n\n")
    assert code == 0
    assert [json.loads(line)["line"] for line in out.splitlines()] == [2]


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        (['{"answer": "ok"}', "not json"], ":3: not JSON"),
        (["[1, 2]"], ":2: expected a JSON object, got list"),
        (['{"context": "x"}'], ":2: answer: Field required"),
        (['{"answer": 3}'], ":2: answer: Input should be a valid string"),
        (['{"answer": "a", "context": [{"title": "no text"}]}'], ":2: context"),
    ],
)
def test_a_bad_line_fails_with_its_file_and_line_and_scores_nothing(
    tmp_path: Path, lines: list[str], message: str
) -> None:
    path = write(tmp_path, [json.dumps(CASES[0]), *lines])
    code, out, err = run(path, "--format", "json")
    assert code == 1 and out == ""
    assert f"error: {path}{message}" in err  # the first line is good: nothing was written for it


def test_a_missing_file_an_unknown_evaluator_and_nli_without_a_model_fail_cleanly(tmp_path: Path) -> None:
    code, _, err = run(str(tmp_path / "nowhere.jsonl"))
    assert code == 1 and "nowhere.jsonl: No such file or directory" in err
    path = write(tmp_path, [json.dumps(CASES[0])])
    code, _, err = run(path, "--evaluator", "oracle")
    assert code == 1 and "unknown evaluator 'oracle'" in err
    code, _, err = run(path, "--evaluator", "nli")
    assert code == 1 and "needs the directory of a local NLI model" in err


def test_a_label_of_another_scheme_is_ignored_not_an_error() -> None:
    cases = parse_cases([json.dumps({"answer": "a", "label": label}) for label in ("Hallucinated", "faithful", 1)])
    assert [case.label for case in cases] == ["hallucinated", None, None]


def test_parse_cases_joins_passages_and_keeps_ids() -> None:
    (case,) = parse_cases([json.dumps({**CASES[0], "id": 7})])
    assert case.id == "7" and case.line == 1 and case.label == "grounded"
    assert case.context == (
        "Refunds: annual plans can be refunded within 30 days of purchase.\n\n"
        "Billing: Invoices are issued on the 1st of each month."
    )
    with pytest.raises(CaseFileError, match=r"^f.jsonl:1: the line is longer"):
        parse_cases(["{" + " " * 1_000_001 + "}"], "f.jsonl")
