"""CPU per scored answer of the default groundedness evaluator, in process.

    .venv/bin/python -m benchmarks.scoring_cost [--repeat 200]

Two measurements, each the median over repeats of ``time.thread_time`` around one
``score(context, question, answer)`` call (a fresh call each time: the evaluator keeps no cache
across answers, only a word-canonicalisation LRU that a live worker would keep warm too):

- **typical**: a support answer of three sentences (a number, a date, a name, a paraphrase)
  against four help-centre passages (~900 characters), the shape of ``support-answer`` traffic;
- **labelled set**: every case of tests/data/hallucination_dev.jsonl, median and p90 over cases.

Figures in benchmarks/README.md ("Hallucination scoring: CPU per scored answer").
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from gateway.scoring import GroundednessEvaluator
from gateway.scoring.cases import read_cases
from gateway.scoring.context import passages_text

DEV_SET = Path(__file__).resolve().parents[1] / "tests" / "data" / "hallucination_dev.jsonl"

TYPICAL_CONTEXT = (
    passages_text(
        [
            {
                "title": "Refunds",
                "text": "Annual plans can be refunded within 30 days of purchase. Monthly plans are not "
                "refundable. Refunds are paid back to the original payment method within 5 "
                "business days.",
            },
            {
                "title": "Billing",
                "text": "Invoices are issued on the 1st of each month. A late fee of $25 applies to "
                "invoices unpaid after 15 days.",
            },
            {
                "title": "Support hours",
                "text": "Our support team is available Monday to Friday, 9am to 5pm CET. Enterprise "
                "customers get phone support around the clock.",
            },
            {
                "title": "Regions",
                "text": "Projects can be migrated to the EU region from Settings > Region. The Frankfurt "
                "data centre opens on 1 March 2027.",
            },
        ]
    )
    or ""
)
TYPICAL_QUESTION = "Can I get my money back on my annual plan, and how long does it take?"
TYPICAL_ANSWER = (
    "Yes - annual plans can be refunded within 30 days of purchase [1]. The money goes back to your "
    "original payment method within 5 business days. If you need help, our support team is there "
    "Monday to Friday from 9am to 5pm CET [3]."
)


def cpu_us(context: str, question: str, answer: str, repeat: int) -> list[float]:
    evaluator = GroundednessEvaluator()
    samples = []
    for _ in range(repeat):
        started = time.thread_time()
        evaluator.score(context, question, answer)
        samples.append((time.thread_time() - started) * 1e6)
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=200, help="Calls per case (default 200).")
    args = parser.parse_args()
    cpu_us(TYPICAL_CONTEXT, TYPICAL_QUESTION, TYPICAL_ANSWER, 20)  # warm the caches and the regexes
    typical = cpu_us(TYPICAL_CONTEXT, TYPICAL_QUESTION, TYPICAL_ANSWER, args.repeat)
    print(
        f"typical support answer ({len(TYPICAL_ANSWER)} chars, context {len(TYPICAL_CONTEXT)} chars): "
        f"median {statistics.median(typical):.0f} µs, p90 {statistics.quantiles(typical, n=10)[-1]:.0f} µs"
    )
    per_case = [
        statistics.median(cpu_us(case.context, case.question, case.answer, max(5, args.repeat // 10)))
        for case in read_cases(DEV_SET)
    ]
    print(
        f"labelled set ({len(per_case)} cases): median {statistics.median(per_case):.0f} µs per answer, "
        f"p90 {statistics.quantiles(per_case, n=10)[-1]:.0f} µs, max {max(per_case):.0f} µs"
    )


if __name__ == "__main__":
    main()
