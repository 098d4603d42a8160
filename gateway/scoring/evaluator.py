"""The one small interface every hallucination evaluator satisfies.

An evaluator scores an answer against the context it was given: ``score(context, question,
answer)`` returns a :class:`Judgement` whose ``score`` is in [0, 1], 1 meaning *unsupported*
(hallucinated), with one :class:`ClaimVerdict` per claim saying why.

Evaluators are synchronous and CPU-bounded: they run off the request path, in a worker, never
on the event loop. They must not do I/O on a request's behalf (a model loaded from disk once is
fine) and must not raise on odd input (empty strings, unicode, very long text).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol, runtime_checkable


class Verdict(StrEnum):
    """What an evaluator concluded about one claim."""

    SUPPORTED = "supported"
    UNSUPPORTED = "unsupported"
    #: The claim declines to answer ("the passages do not say"): never a hallucination.
    ABSTENTION = "abstention"


@dataclass(frozen=True, slots=True)
class ClaimVerdict:
    """One claim of the answer, and the evaluator's verdict on it.

    ``reasons`` name what failed ("number '60' not in context", "entity 'Berlin' not in
    context", "negation disagrees with context", "content overlap 0.20 < 0.50"); a supported
    claim may carry informational reasons too. ``overlap`` is the share of the claim's content
    words found in the context (None when the evaluator does not measure it).
    """

    text: str
    verdict: Verdict
    reasons: tuple[str, ...] = ()
    overlap: float | None = None
    #: The claim's weight in the judgement's score (its content-word count, at least 1).
    weight: float = 1.0

    @property
    def supported(self) -> bool:
        """True unless the claim is unsupported (an abstention counts as supported)."""
        return self.verdict is not Verdict.UNSUPPORTED


@dataclass(frozen=True, slots=True)
class Judgement:
    """An evaluator's verdict on one answer: ``score`` in [0, 1], 1 = unsupported."""

    score: float
    claims: tuple[ClaimVerdict, ...] = ()
    evaluator: str = ""
    #: The evaluator's default threshold: a score above it labels the answer hallucinated.
    threshold: float = 0.5
    extra: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not 0.0 <= self.score <= 1.0:
            raise ValueError(f"score {self.score!r} is outside [0, 1]")

    @property
    def hallucinated(self) -> bool:
        return self.score > self.threshold

    @property
    def label(self) -> str:
        return "hallucinated" if self.hallucinated else "grounded"

    @property
    def unsupported(self) -> tuple[ClaimVerdict, ...]:
        return tuple(c for c in self.claims if c.verdict is Verdict.UNSUPPORTED)


def weighted_score(claims: tuple[ClaimVerdict, ...]) -> float:
    """The weighted share of unsupported claims (0 when there are none)."""
    total = sum(c.weight for c in claims)
    if total <= 0:
        return 0.0
    bad = sum(c.weight for c in claims if c.verdict is Verdict.UNSUPPORTED)
    return min(1.0, max(0.0, bad / total))


@runtime_checkable
class Evaluator(Protocol):
    """Scores (context, question, answer); synchronous, CPU-bounded, never raises on odd text."""

    @property
    def name(self) -> str: ...

    def score(self, context: str, question: str, answer: str) -> Judgement: ...
