"""Scoring cases from a JSONL file, and an evaluator's accuracy on labelled ones.

One case per line, as ``gateway hallucination score`` reads them::

    {"context": "..." or ["passage", {"title": "...", "text": "..."}, ...],
     "question": "...", "answer": "...", "label": "grounded" | "hallucinated", "id": "..."}

``answer`` is required; ``context`` and ``question`` default to empty, ``label`` and ``id`` are
optional (a label makes the case count towards :func:`accuracy`), and other keys are ignored, so
a file can carry notes such as ``category``. A ``label`` other than ``grounded`` or
``hallucinated`` (any case) is ignored too: it belongs to someone else's labelling scheme.
Blank lines are skipped. A line that is not a JSON object of that shape is a
:class:`CaseFileError` naming the file and line; nothing is scored until every line has been
read.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from gateway.scoring.context import passages_text
from gateway.scoring.evaluator import Evaluator, Judgement

Label = Literal["grounded", "hallucinated"]
#: A line longer than this is refused: the evaluators read at most 200 KB of context anyway.
MAX_LINE_CHARS = 1_000_000


class CaseFileError(ValueError):
    """A case file that cannot be read: ``str()`` is ``FILE:LINE: problem``."""


class _Passage(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    title: str | None = None
    text: str


class _CaseLine(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    context: str | list[str | _Passage] | None = None
    question: str = ""
    answer: str
    label: Any = None
    id: str | int | None = Field(None, description="Shown next to the case's result.")


@dataclass(frozen=True, slots=True)
class Case:
    """One (context, question, answer) to score; ``line`` is its 1-based line in the file."""

    line: int
    context: str
    question: str
    answer: str
    label: Label | None = None
    id: str | None = None


def parse_cases(lines: Iterable[str], source: str = "<input>") -> list[Case]:
    """Every case of a JSONL text, or :class:`CaseFileError` at the first bad line."""
    cases: list[Case] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{source}:{number}"
        if len(line) > MAX_LINE_CHARS:
            raise CaseFileError(f"{where}: the line is longer than {MAX_LINE_CHARS} characters")
        try:
            raw = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            raise CaseFileError(f"{where}: not JSON ({exc})") from None
        if not isinstance(raw, dict):
            raise CaseFileError(f"{where}: expected a JSON object, got {type(raw).__name__}")
        try:
            parsed = _CaseLine.model_validate(raw)
        except ValidationError as exc:
            first = exc.errors()[0]
            field = ".".join(str(part) for part in first["loc"]) or "line"
            raise CaseFileError(f"{where}: {field}: {first['msg']}") from None
        context: Any = parsed.context
        if isinstance(context, list):
            context = [p if isinstance(p, str) else p.model_dump(exclude_none=True) for p in context]
        label = parsed.label.strip().lower() if isinstance(parsed.label, str) else None
        known: Label | None = "grounded" if label == "grounded" else "hallucinated" if label == "hallucinated" else None
        cases.append(
            Case(
                number,
                passages_text(context) or "",
                parsed.question,
                parsed.answer,
                known,
                None if parsed.id is None else str(parsed.id),
            )
        )
    return cases


def read_cases(path: str | Path) -> list[Case]:
    """The cases of a JSONL file (``-`` is standard input)."""
    import sys

    if str(path) == "-":
        return parse_cases(sys.stdin, "<stdin>")
    try:
        with open(path, encoding="utf-8") as handle:
            return parse_cases(handle, str(path))
    except UnicodeDecodeError as exc:
        raise CaseFileError(f"{path}: not UTF-8 text ({exc.reason})") from None
    except OSError as exc:
        raise CaseFileError(f"{path}: {exc.strerror or exc}") from None


def score_cases(evaluator: Evaluator, cases: Sequence[Case]) -> Iterator[tuple[Case, Judgement]]:
    """Each case with the evaluator's judgement, in order."""
    for case in cases:
        yield case, evaluator.score(case.context, case.question, case.answer)


@dataclass(frozen=True, slots=True)
class Accuracy:
    """How well judgements find hallucinated answers: the positive class is ``hallucinated``."""

    true_positives: int = 0
    false_positives: int = 0
    false_negatives: int = 0
    true_negatives: int = 0

    @property
    def cases(self) -> int:
        return self.true_positives + self.false_positives + self.false_negatives + self.true_negatives

    @property
    def precision(self) -> float:
        flagged = self.true_positives + self.false_positives
        return self.true_positives / flagged if flagged else 0.0

    @property
    def recall(self) -> float:
        hallucinated = self.true_positives + self.false_negatives
        return self.true_positives / hallucinated if hallucinated else 0.0

    @property
    def f1(self) -> float:
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if p + r else 0.0


def accuracy(results: Iterable[tuple[Case, Judgement]]) -> Accuracy:
    """Precision, recall and F1 on the labelled cases among ``results`` (unlabelled ones are skipped)."""
    tp = fp = fn = tn = 0
    for case, judgement in results:
        if case.label is None:
            continue
        gold = case.label == "hallucinated"
        if judgement.hallucinated and gold:
            tp += 1
        elif judgement.hallucinated:
            fp += 1
        elif gold:
            fn += 1
        else:
            tn += 1
    return Accuracy(tp, fp, fn, tn)
