"""Quality in a rollout's analysis: hallucination scores and user feedback per variant.

``QualityMetrics`` is the analysis' ``MetricSource``: the ledger's numbers per variant
(requests, errors, latency, cost), plus, from the store every replica writes, the window's
scored answers and feedback values of the rollout's requests. Three kinds of metric read them:

- ``hallucination_rate``: the share of scored answers above the threshold (the check's
  ``threshold``, else each answer's evaluator threshold, as stored);
- ``hallucination_score``: the mean score (0 grounded .. 1 unsupported);
- ``feedback.NAME``: the mean value of the feedback metric ``NAME`` (post ``thumbs_down`` as 1
  for a thumbs-down and 0 for a thumbs-up, and ``feedback.thumbs_down`` is the thumbs-down rate);
- ``langfuse.NAME``: the mean value of the score ``NAME`` that Langfuse's own evaluators put on
  the requests' traces, pulled back by ``gateway.scoring.pull``.

Each counts its samples (scored answers, feedback values): below the check's ``min_samples`` in
the canary (or in stable, when the check compares with it) the check is inconclusive.

``RollbackAnnotator`` marks the traces of a rolled-back canary in Langfuse: a score
``rollout_rolled_back`` (value 1, the reason and the numbers in its comment) on each canary
trace of the last window, at most ``MAX_ANNOTATED`` of them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Final

from sqlalchemy import select

from gateway.rollouts.analysis import LedgerMetrics, MetricReader, VariantStats, register_reader
from gateway.rollouts.model import CANARY
from gateway.scoring.langfuse import LangfuseScore
from gateway.scoring.store import QualityStore
from gateway.storage.schema import ledger

if TYPE_CHECKING:
    from gateway.config.rollouts import CheckSpec
    from gateway.rollouts.analysis import Analysis
    from gateway.rollouts.model import Rollout
    from gateway.scoring.langfuse import ScoreSender
    from gateway.storage import Database

log = logging.getLogger("gateway.scoring")

MAX_ANNOTATED: Final = 200
ANNOTATION: Final = "rollout_rolled_back"


@dataclass(frozen=True, slots=True)
class QualityStats(VariantStats):
    """A variant's ledger numbers plus its scored answers and feedback values in the window."""

    scores: tuple[tuple[float, bool], ...] = ()  # (score, hallucinated by its evaluator's threshold)
    feedback: dict[str, tuple[float, ...]] = field(default_factory=dict)
    langfuse: dict[str, tuple[float, ...]] = field(default_factory=dict)  # evaluator scores, by name

    def hallucination_rate(self, threshold: float | None) -> float:
        if not self.scores:
            return 0.0
        if threshold is None:
            bad = sum(1 for _, hallucinated in self.scores if hallucinated)
        else:
            bad = sum(1 for score, _ in self.scores if score > threshold)
        return bad / len(self.scores)

    def mean_score(self) -> float:
        return sum(score for score, _ in self.scores) / len(self.scores) if self.scores else 0.0

    def summary(self) -> dict[str, Any]:
        found = VariantStats.summary(self)
        found["scored"] = len(self.scores)
        if self.scores:
            found["hallucination_rate"] = round(self.hallucination_rate(None), 6)
            found["hallucination_score"] = round(self.mean_score(), 6)
        for name, values in sorted(self.feedback.items()):
            found[f"feedback.{name}"] = {"count": len(values), "mean": round(sum(values) / len(values), 6)}
        for name, values in sorted(self.langfuse.items()):
            found[f"langfuse.{name}"] = {"count": len(values), "mean": round(sum(values) / len(values), 6)}
        return found


def _quality(stats: VariantStats) -> QualityStats:
    return stats if isinstance(stats, QualityStats) else QualityStats()


def _hallucination_rate(check: CheckSpec) -> MetricReader:
    return MetricReader(lambda s: _quality(s).hallucination_rate(check.threshold), lambda s: len(_quality(s).scores))


def _hallucination_score(check: CheckSpec) -> MetricReader:
    return MetricReader(lambda s: _quality(s).mean_score(), lambda s: len(_quality(s).scores))


def _named_mean(kind: Callable[[QualityStats], dict[str, tuple[float, ...]]]) -> Callable[[CheckSpec], MetricReader]:
    """The reader of ``KIND.NAME``: the mean of the values named ``NAME``, counted as samples."""

    def reader(check: CheckSpec) -> MetricReader:
        name = check.metric.partition(".")[2]

        def value(stats: VariantStats) -> float:
            values = kind(_quality(stats)).get(name, ())
            return sum(values) / len(values) if values else 0.0

        return MetricReader(value, lambda s: len(kind(_quality(s)).get(name, ())))

    return reader


register_reader("hallucination_rate", "share of scored answers above the hallucination threshold", _hallucination_rate)
register_reader(
    "hallucination_score",
    "mean hallucination score of scored answers (0 grounded .. 1 unsupported)",
    _hallucination_score,
)
register_reader(
    "feedback",
    "mean value of the feedback metric NAME posted to /v1/feedback",
    _named_mean(lambda s: s.feedback),
    family=True,
)
register_reader(
    "langfuse",
    "mean value of the score NAME Langfuse's own evaluators put on the traces (pulled back)",
    _named_mean(lambda s: s.langfuse),
    family=True,
)


class QualityMetrics:
    """The analysis' ``MetricSource``: the ledger's numbers, with scores and feedback (fleet-wide)."""

    def __init__(self, db: Database) -> None:
        self._ledger = LedgerMetrics(db)
        self._store = QualityStore(db)

    async def window(self, rollout_id: str, since: datetime) -> dict[str, VariantStats]:
        base, scores, votes, evaluated = await asyncio.gather(
            self._ledger.window(rollout_id, since),
            self._store.scores(rollout_id, since),
            self._store.feedback(rollout_id, since),
            self._store.langfuse(rollout_id, since),
        )
        per_scores: dict[str, list[tuple[float, bool]]] = {}
        for sample in scores:
            per_scores.setdefault(sample.variant, []).append((sample.score, sample.hallucinated))
        per_feedback: dict[str, dict[str, list[float]]] = {}
        for vote in votes:
            per_feedback.setdefault(vote.variant, {}).setdefault(vote.metric, []).append(vote.value)
        per_langfuse: dict[str, dict[str, list[float]]] = {}
        for score in evaluated:
            per_langfuse.setdefault(score.variant, {}).setdefault(score.metric, []).append(score.value)
        found: dict[str, VariantStats] = {}
        for variant in {*base, *per_scores, *per_feedback, *per_langfuse}:
            stats = base.get(variant, VariantStats())
            found[variant] = QualityStats(
                stats.requests,
                stats.errors,
                stats.latencies_ms,
                stats.cost_usd,
                scores=tuple(per_scores.get(variant, ())),
                feedback={name: tuple(values) for name, values in per_feedback.get(variant, {}).items()},
                langfuse={name: tuple(values) for name, values in per_langfuse.get(variant, {}).items()},
            )
        return found


class RollbackAnnotator:
    """On a rollback, a ``rollout_rolled_back`` score on the canary's recent traces (an ``Alerts``)."""

    def __init__(self, db: Database, sender: ScoreSender) -> None:
        self._db = db
        self._sender = sender
        self._tasks: set[asyncio.Task[int]] = set()

    def rolled_back(self, rollout: Rollout, analysis: Analysis) -> None:
        task = asyncio.get_running_loop().create_task(self.annotate(rollout, analysis), name="rollback-annotation")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def decided(self, rollout: Rollout, action: str, verdict: str) -> None:
        return None

    async def annotate(self, rollout: Rollout, analysis: Analysis) -> int:
        since = datetime.now(UTC) - timedelta(seconds=rollout.spec.interval_s * 2)
        c = ledger.c
        query = (
            select(c.trace_id)
            .where(c.rollout_id == rollout.id, c.variant == CANARY, c.ts >= since, c.trace_id.is_not(None))
            .order_by(c.ts.desc())
            .limit(MAX_ANNOTATED)
        )
        try:
            async with self._db.engine.connect() as conn:
                traces = list(dict.fromkeys((await conn.execute(query)).scalars().all()))
        except Exception:
            log.exception("could not find the rolled-back canary's traces")
            return 0
        numbers = "; ".join(
            f"{check.metric}: canary {check.canary:.4g}"
            + (f", stable {check.stable:.4g}" if check.stable is not None else "")
            + (f", bound {check.bound:.4g}" if check.bound is not None else "")
            for check in analysis.checks
            if not check.ok
        )
        comment = f"rollout {rollout.id} rolled back: {analysis.why}" + (f" ({numbers})" if numbers else "")
        for trace_id in traces:
            self._sender.submit(
                LangfuseScore(
                    id=f"{trace_id}-{ANNOTATION}",
                    trace_id=trace_id,
                    name=ANNOTATION,
                    value=1.0,
                    comment=comment,
                    metadata={"rollout_id": rollout.id, "variant": CANARY, "analysis": analysis.as_dict()},
                )
            )
        return len(traces)

    async def close(self) -> None:
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
