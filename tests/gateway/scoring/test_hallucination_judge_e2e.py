"""The shipped judge prompt, pushed, evaluated and labelled like any prompt, then called by
``gateway hallucination score --evaluator judge`` through the gateway's own routing.

Run as a user would, in a project folder made of the repository's gateway.yaml, policies and
prompts, on SQLite. The judge prompt names the ``mock`` model, which answers JSON valid for the
prompt's schema with every claim "supported": what is shown here is the path (the prompt
resolved by label, rendered, routed, recorded), not a model's judgement (test_llm_judge.py
scripts the verdicts).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from support.gateway_proc import REPO


def gateway(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": "/usr/bin:/bin", "HOME": str(root), "DATABASE_URL": f"sqlite:///{root / 'gateway.db'}"},
    )
    return result


@pytest.fixture
def project(tmp_path: Path) -> Path:
    shutil.copy(REPO / "gateway.yaml", tmp_path / "gateway.yaml")
    shutil.copytree(REPO / "policies", tmp_path / "policies")
    shutil.copytree(REPO / "prompts", tmp_path / "prompts")
    return tmp_path


def test_the_judge_prompt_is_pushed_evaluated_labelled_and_judges_through_routing(project: Path) -> None:
    pushed = gateway(project, "prompts", "push", "prompts/hallucination-judge", "-m", "The judge, first version")
    assert pushed.returncode == 0 and "Pushed hallucination-judge v1" in pushed.stdout, pushed.stderr
    evaluated = gateway(project, "prompts", "eval", "hallucination-judge@v1")
    assert evaluated.returncode == 0 and "PASSED: 4/4 cases" in evaluated.stdout, evaluated.stdout + evaluated.stderr
    labelled = gateway(project, "prompts", "label", "set", "hallucination-judge", "staging", "1")
    assert labelled.returncode == 0, labelled.stderr

    cases = project / "cases.jsonl"
    cases.write_text(
        json.dumps(
            {
                "context": ["Annual plans can be refunded within 30 days."],
                "question": "Refund?",
                "answer": "Annual plans can be refunded within 60 days.",
            }
        )
        + "\n"
    )
    scored = gateway(
        project,
        "hallucination",
        "score",
        str(cases),
        "--evaluator",
        "judge",
        "--judge-prompt",
        "prompt:hallucination-judge@staging",
        "--format",
        "json",
    )
    assert scored.returncode == 0, scored.stderr
    (row,) = [json.loads(line) for line in scored.stdout.splitlines()]
    assert (row["evaluator"], row["score"], row["label"]) == ("judge", 0.0, "grounded")  # the mock approves all
    assert [claim["verdict"] for claim in row["claims"]] == ["supported"]

    missing = gateway(
        project, "hallucination", "score", str(cases), "--evaluator", "judge", "--judge-prompt", "prompt:no-such-judge"
    )
    assert missing.returncode == 1
    assert "the 'judge' evaluator failed: the judge's request failed (404)" in missing.stderr
