"""The live-scoring feature's factory: the record-stage sink, the writers, the analysis source.

``build_scoring(settings, db, registry)`` returns:

- ``scorer``: the record stage's sink that samples and queues answers (None when
  ``scoring.enabled`` is false), and its worker task, started;
- ``sender``: the Langfuse scores sender, when tracing is configured (scores, feedback and
  rollback annotations all go through it);
- ``quality``: the rollouts analysis' ``MetricSource`` (ledger + scores + feedback); always
  built, so that a policy gating on ``feedback.NAME`` works with scoring off;
- ``annotator``: marks a rolled-back canary's traces (with the sender);
- ``feedback``: the service behind ``POST /v1/feedback``;
- ``puller``: pulls back the scores Langfuse's own evaluators produced (Langfuse configured and
  ``scoring.langfuse_pull.enabled``); it asks only while ``puller.leading()`` says this replica
  holds the rollout controller lease (the runtime wires it to the analyzer).

One shutdown step stops them in order, within ``scoring.shutdown_timeout_s``: score what is
queued, write the scores, then send what waits for Langfuse.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from prometheus_client import Counter, Histogram

from gateway.features import Feature
from gateway.feedback import FeedbackService
from gateway.scoring import build_evaluator
from gateway.scoring.langfuse import ScoreSender
from gateway.scoring.live import LiveMetrics, LiveScorer
from gateway.scoring.pull import PulledStore, PullMetrics, ScorePuller, ScoresClient
from gateway.scoring.quality import QualityMetrics, RollbackAnnotator
from gateway.scoring.runners import ProcessRunner, Runner
from gateway.scoring.store import ScoreWriter

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from gateway.config.settings import Settings
    from gateway.storage import Database

#: Histogram buckets of the hallucination score (0 grounded .. 1 unsupported).
SCORE_BUCKETS = (0.0, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9, 1.0)


@dataclass
class ScoringFeature(Feature):
    scorer: LiveScorer | None = None
    sender: ScoreSender | None = None
    quality: QualityMetrics | None = None
    annotator: RollbackAnnotator | None = None
    feedback: FeedbackService | None = None
    puller: ScorePuller | None = None


def build_scoring(
    settings: Settings,
    db: Database,
    registry: CollectorRegistry,
    *,
    flush_ledger: Callable[[], Awaitable[None]] | None = None,
    runner: Runner | None = None,
) -> ScoringFeature:
    """The feature, its tasks started (call inside the running loop). ``runner`` replaces the
    worker process (tests)."""
    config = settings.scoring
    sender: ScoreSender | None = None
    # Scores go to Langfuse only: an OTLP-only tracing set-up has nowhere to send them.
    if settings.tracing.enabled and settings.tracing.langfuse:
        sender = ScoreSender(
            settings.tracing,
            queue_size=config.langfuse_queue_size,
            retries=config.langfuse_retries,
            sent=Counter(
                "gateway_langfuse_scores_sent_total",
                "Scores Langfuse took (hallucination, feedback, rollback annotations).",
                registry=registry,
            ),
            dropped=Counter(
                "gateway_langfuse_scores_dropped_total",
                "Scores not delivered to Langfuse, by reason (queue_full, send_failed, shutdown).",
                ("reason",),
                registry=registry,
            ),
        )
        sender.start()
    scorer: LiveScorer | None = None
    writer: ScoreWriter | None = None
    if config.enabled:
        if runner is None:
            # A wrong name or a missing model directory stops start-up here, not every batch in the
            # worker (building it is cheap: an NLI model loads on its first answer).
            build_evaluator(config.evaluator, model_dir=config.model_dir or None)
        dropped = Counter(
            "gateway_scoring_dropped_total",
            "Sampled answers not scored or not stored, by reason "
            "(queue_full, timeout, evaluator_error, store_queue_full, store_failed, shutdown).",
            ("reason",),
            registry=registry,
        )
        writer = ScoreWriter(
            db,
            queue_size=config.queue_size,
            batch_size=256,
            flush_interval_s=config.flush_interval_ms / 1000,
            written=Counter(
                "gateway_scoring_scores_written_total", "Hallucination scores written to the store.", registry=registry
            ),
            dropped=dropped,
        )
        writer.start()
        metrics = LiveMetrics(
            scored=Histogram(
                "gateway_hallucination_score",
                "Hallucination scores of live answers (1 = unsupported), by prompt, version and rollout variant.",
                ("prompt", "version", "variant"),
                buckets=SCORE_BUCKETS,
                registry=registry,
            ),
            skipped=Counter(
                "gateway_scoring_skipped_total",
                "Sampled answers not scored, by reason (no_context, empty_answer).",
                ("reason",),
                registry=registry,
            ),
            dropped=dropped,
        )
        scorer = LiveScorer(
            runner or ProcessRunner(config.evaluator, config.model_dir or None),
            metrics,
            queue_size=config.queue_size,
            batch_size=config.batch_size,
            timeout_s=config.timeout_s,
            writer=writer,
            sender=sender,
        )
        scorer.start()
    annotator = RollbackAnnotator(db, sender) if sender is not None else None
    puller = build_puller(settings, db, registry)

    async def close() -> None:
        if puller is not None:
            await puller.close()
        deadline = time.monotonic() + config.shutdown_timeout_s
        if scorer is not None:
            await scorer.close(deadline)
        if writer is not None:
            await writer.close(deadline)
        if annotator is not None:
            await annotator.close()
        if sender is not None:
            await sender.close(deadline)

    return ScoringFeature(
        closers=[close],
        scorer=scorer,
        sender=sender,
        quality=QualityMetrics(db),
        annotator=annotator,
        feedback=FeedbackService(db, sender=sender, flush_ledger=flush_ledger),
        puller=puller,
    )


def build_puller(settings: Settings, db: Database, registry: CollectorRegistry) -> ScorePuller | None:
    """The evaluator-score puller, started, when traces go to Langfuse and it is enabled."""
    config = settings.scoring.langfuse_pull
    if not (settings.tracing.langfuse and config.enabled):
        return None
    client = ScoresClient(
        settings.tracing, page_size=config.page_size, max_pages=config.max_pages, retries=config.retries
    )
    metrics = PullMetrics(
        traces=Counter(
            "gateway_langfuse_pull_traces_total",
            "Rollout traces whose scores Langfuse listed to the puller.",
            registry=registry,
        ),
        stored=Counter(
            "gateway_langfuse_pulled_scores_total",
            "Scores of Langfuse's own evaluators pulled back and stored.",
            registry=registry,
        ),
        skipped=Counter(
            "gateway_langfuse_pull_skipped_total",
            "Scores listed but not stored, by reason (own, source, not_numeric, duplicate).",
            ("reason",),
            registry=registry,
        ),
        failures=Counter(
            "gateway_langfuse_pull_failures_total",
            "Failed score pulls, by reason "
            "(unauthorized, rejected, server_error, timeout, unreachable, bad_answer, store_failed).",
            ("reason",),
            registry=registry,
        ),
    )
    puller = ScorePuller(client, PulledStore(db), metrics, config, leading=lambda: False)
    puller.start()
    return puller
