"""Evaluation of prompt versions: expectations (evaluators) and the runner that drives the gateway.

The runner is imported when first asked for: it drives the whole request path (the core, keys,
storage), and ``gateway prompts check``, which every pull request of prompts runs and which only
validates files against the evaluators, took 1.1 s with those imports.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from gateway.prompts.evals.evaluators import (
    CaseOutcome,
    Check,
    Evaluator,
    EvaluatorSet,
    default_evaluators,
)

if TYPE_CHECKING:
    from gateway.prompts.evals.runner import EvalReport, EvalRunner

__all__ = ["CaseOutcome", "Check", "EvalReport", "EvalRunner", "Evaluator", "EvaluatorSet", "default_evaluators"]


def __getattr__(name: str) -> Any:
    if name in ("EvalReport", "EvalRunner"):
        from gateway.prompts.evals import runner

        return getattr(runner, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
