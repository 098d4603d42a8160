"""Expectations on a golden case's answer, one small evaluator per kind.

A golden case says what it expects as a mapping, e.g.
``{"contains": ["refund"], "not_contains": "I don't know", "max_latency_ms": 2000}``; each key
names an ``Evaluator``. The built-in kinds check text, a regular expression, the answer's JSON
against a schema, cost and latency. Other kinds (a judge model grading the answer) plug in by
implementing ``Evaluator`` and joining the ``EvaluatorSet`` the service is built with; specs are
validated at push time, so a typo in a dataset is reported then, not at evaluation time.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import jsonschema
import orjson
from jsonschema.exceptions import SchemaError
from jsonschema.validators import validator_for


@dataclass(frozen=True, slots=True)
class CaseOutcome:
    """What one golden case's request produced."""

    output: str  # the answer's text (or a tool call's arguments when there is no text)
    cost_usd: float
    latency_ms: float
    status: int
    error: str | None = None


@dataclass(frozen=True, slots=True)
class Check:
    """One expectation's verdict; ``score`` in [0, 1] lets partial matches count in the run's score."""

    kind: str
    passed: bool
    score: float
    detail: str

    def as_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "passed": self.passed, "score": self.score, "detail": self.detail}


class Evaluator(Protocol):
    """One kind of expectation. ``kind`` is its key in a golden case's ``expect`` mapping."""

    kind: str

    def validate(self, spec: Any) -> str | None:
        """A problem with ``spec`` (checked when the prompt is pushed), or ``None``."""
        ...

    async def evaluate(self, spec: Any, outcome: CaseOutcome) -> Check:
        """Judge one answer. Async so evaluators that call a model (a judge) fit the same shape."""
        ...


def _strings(spec: Any) -> list[str] | None:
    if isinstance(spec, str) and spec:
        return [spec]
    if isinstance(spec, list) and spec and all(isinstance(item, str) and item for item in spec):
        return list(spec)
    return None


class Contains:
    """Every given string appears in the answer (case-sensitive)."""

    kind = "contains"

    def validate(self, spec: Any) -> str | None:
        return None if _strings(spec) else "must be a non-empty string or a list of them"

    async def evaluate(self, spec: Any, outcome: CaseOutcome) -> Check:
        wanted = _strings(spec) or []
        missing = [text for text in wanted if text not in outcome.output]
        score = (len(wanted) - len(missing)) / len(wanted)
        detail = "all present" if not missing else f"missing {missing}"
        return Check(self.kind, not missing, score, detail)


class NotContains:
    """None of the given strings appears in the answer (case-sensitive)."""

    kind = "not_contains"

    def validate(self, spec: Any) -> str | None:
        return None if _strings(spec) else "must be a non-empty string or a list of them"

    async def evaluate(self, spec: Any, outcome: CaseOutcome) -> Check:
        banned = _strings(spec) or []
        found = [text for text in banned if text in outcome.output]
        score = (len(banned) - len(found)) / len(banned)
        detail = "none present" if not found else f"found {found}"
        return Check(self.kind, not found, score, detail)


class Regex:
    """The answer matches a regular expression (``re.search``, so anchor it to match all)."""

    kind = "regex"

    def validate(self, spec: Any) -> str | None:
        if not isinstance(spec, str) or not spec:
            return "must be a non-empty regular expression"
        try:
            re.compile(spec)
        except re.error as exc:
            return f"invalid regular expression: {exc}"
        return None

    async def evaluate(self, spec: Any, outcome: CaseOutcome) -> Check:
        matched = re.search(spec, outcome.output) is not None
        return Check(self.kind, matched, 1.0 if matched else 0.0, "matches" if matched else f"no match for {spec!r}")


class JsonSchema:
    """The answer is JSON that validates against a JSON Schema (structured outputs, tool calls)."""

    kind = "json_schema"

    def validate(self, spec: Any) -> str | None:
        if not isinstance(spec, dict):
            return "must be a JSON Schema object"
        try:
            validator_for(spec).check_schema(spec)
        except SchemaError as exc:
            return f"not a valid JSON Schema: {exc.message}"
        return None

    async def evaluate(self, spec: Any, outcome: CaseOutcome) -> Check:
        try:
            value = orjson.loads(outcome.output)
        except orjson.JSONDecodeError as exc:
            return Check(self.kind, False, 0.0, f"the answer is not JSON: {exc.msg}")
        error = jsonschema.exceptions.best_match(validator_for(spec)(spec).iter_errors(value))
        if error is None:
            return Check(self.kind, True, 1.0, "valid")
        where = "/".join(str(part) for part in error.absolute_path) or "(root)"
        return Check(self.kind, False, 0.0, f"{where}: {error.message}")


class _Maximum:
    kind = ""
    unit = ""

    def validate(self, spec: Any) -> str | None:
        if isinstance(spec, bool) or not isinstance(spec, int | float) or spec < 0:
            return "must be a number >= 0"
        return None

    def _measure(self, outcome: CaseOutcome) -> float:
        raise NotImplementedError

    async def evaluate(self, spec: Any, outcome: CaseOutcome) -> Check:
        value = self._measure(outcome)
        ok = value <= spec
        return Check(self.kind, ok, 1.0 if ok else 0.0, f"{value:.6g} {self.unit} (limit {spec:g})")


class MaxCost(_Maximum):
    """The request cost at most this much (USD, as priced by the gateway)."""

    kind = "max_cost_usd"
    unit = "USD"

    def _measure(self, outcome: CaseOutcome) -> float:
        return outcome.cost_usd


class MaxLatency(_Maximum):
    """The answer took at most this long (milliseconds, whole request through the gateway)."""

    kind = "max_latency_ms"
    unit = "ms"

    def _measure(self, outcome: CaseOutcome) -> float:
        return outcome.latency_ms


class EvaluatorSet:
    """The expectation kinds a deployment understands, by key."""

    def __init__(self, evaluators: Iterable[Evaluator]) -> None:
        self._by_kind: dict[str, Evaluator] = {}
        for evaluator in evaluators:
            if evaluator.kind in self._by_kind:
                raise ValueError(f"two evaluators claim the expectation kind {evaluator.kind!r}")
            self._by_kind[evaluator.kind] = evaluator

    @property
    def kinds(self) -> list[str]:
        return sorted(self._by_kind)

    def with_evaluator(self, evaluator: Evaluator) -> EvaluatorSet:
        """A new set with one more kind (e.g. a judge-model evaluator)."""
        return EvaluatorSet([*self._by_kind.values(), evaluator])

    def problems(self, expect: Mapping[str, Any]) -> list[str]:
        """What is wrong with a case's ``expect`` mapping, as ``kind: problem`` lines."""
        found = []
        for kind, spec in expect.items():
            evaluator = self._by_kind.get(kind)
            if evaluator is None:
                found.append(f"{kind}: unknown expectation; known: {', '.join(self.kinds)}")
                continue
            problem = evaluator.validate(spec)
            if problem:
                found.append(f"{kind}: {problem}")
        return found

    async def evaluate(self, expect: Mapping[str, Any], outcome: CaseOutcome) -> list[Check]:
        return [await self._by_kind[kind].evaluate(spec, outcome) for kind, spec in expect.items()]


def default_evaluators() -> EvaluatorSet:
    return EvaluatorSet([Contains(), NotContains(), Regex(), JsonSchema(), MaxCost(), MaxLatency()])
