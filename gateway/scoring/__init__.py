"""Hallucination scoring: evaluators that score an answer against the context it was given.

    evaluator.py     the interface: ``Evaluator.score(context, question, answer) -> Judgement``
    groundedness.py  the default evaluator: offline, standard library only
    nli.py           a hook for a local NLI model the operator supplies on disk
    context.py       where an answer's context comes from (request field, prompt variable)

Evaluators are synchronous and CPU-bounded; they run off the request path (docs/scoring.md).
"""

from gateway.scoring.evaluator import ClaimVerdict, Evaluator, Judgement, Verdict
from gateway.scoring.groundedness import GroundednessEvaluator

__all__ = ["ClaimVerdict", "Evaluator", "GroundednessEvaluator", "Judgement", "Verdict"]
