"""Evaluation of prompt versions: expectations (evaluators) and the runner that drives the gateway."""

from gateway.prompts.evals.evaluators import (
    CaseOutcome,
    Check,
    Evaluator,
    EvaluatorSet,
    default_evaluators,
)
from gateway.prompts.evals.runner import EvalReport, EvalRunner

__all__ = ["CaseOutcome", "Check", "EvalReport", "EvalRunner", "Evaluator", "EvaluatorSet", "default_evaluators"]
