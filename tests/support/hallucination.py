"""The hand-labelled hallucination sets and the accuracy table docs/scoring.md reports for them,
shared by the evaluators' accuracy floor tests."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SETS = {name: REPO / f"tests/data/hallucination_{file}.jsonl"
        for name, file in (("dev", "dev"), ("validation", "validation"), ("held-out", "holdout"))}
#: A row of the page's accuracy table: | `evaluator` | set | cases | precision | recall | F1 | ...
ROW = re.compile(
    r"^\|\s*`(?P<evaluator>[\w-]+)`\s*\|\s*(?P<set>[\w-]+)\s*\|\s*(?P<cases>\d+)\s*\|\s*(?P<p>[\d.]+)\s*\|"
    r"\s*(?P<r>[\d.]+)\s*\|\s*(?P<f1>[\d.]+)\s*\|",
    re.MULTILINE,
)


def documented() -> dict[tuple[str, str], dict[str, float]]:
    """(evaluator, set) -> the figures docs/scoring.md's "Accuracy" section reports."""
    page = (REPO / "docs/scoring.md").read_text()
    section = page[page.index("## Accuracy") :]
    return {
        (m["evaluator"], m["set"]): {
            "cases": float(m["cases"]),
            "precision": float(m["p"]),
            "recall": float(m["r"]),
            "f1": float(m["f1"]),
        }
        for m in ROW.finditer(section)
    }
