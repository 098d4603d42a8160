"""Quality signals for rollouts: the analysis' metrics over scores and feedback, the fleet-wide
store (both backends), the feedback service's team check, and the Langfuse scores sender."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Counter
from pydantic import SecretStr
from sqlalchemy import insert, select

from gateway.auth import Principal
from gateway.catalog import Catalog, build_catalog
from gateway.config.policies import ModelsFile, PolicyBundle, TeamsFile
from gateway.config.rollouts import RolloutsFile
from gateway.config.settings import TracingSettings
from gateway.errors import InvalidRequest, NotFound
from gateway.feedback.service import FeedbackService, parse_body
from gateway.rollouts.analysis import VariantStats, evaluate
from gateway.scoring.langfuse import LangfuseScore, ScoreSender
from gateway.scoring.quality import QualityMetrics, QualityStats
from gateway.scoring.store import ScoredAnswer, ScoreWriter
from gateway.storage import Database, open_database
from gateway.storage.schema import feedback, ledger
from gateway.testing.langfuse_receiver import LangfuseReceiver


def catalog(*checks: dict[str, Any]) -> Catalog:
    return build_catalog(
        PolicyBundle(
            models=ModelsFile.model_validate(
                {
                    "aliases": {
                        "chat": {
                            "deployments": [
                                {"provider": "mock", "model": "a"},
                                {"provider": "mock", "model": "b", "weight": 0},
                            ]
                        }
                    }
                }
            ),
            teams=TeamsFile.model_validate({"teams": {"t": {}}}),
            rollouts=RolloutsFile.model_validate(
                {
                    "rollouts": {
                        "ro": {
                            "target": {"alias": "chat", "canary": {"deployment": 1}},
                            "steps": [{"weight": 50}, {"weight": 100}],
                            "min_requests": 5,
                            "checks": list(checks),
                        }
                    }
                }
            ),
        )
    )


def quality(requests: int, scores: list[float] = (), **feedback: list[float]) -> QualityStats:  # type: ignore[assignment]
    return QualityStats(
        requests,
        0,
        tuple(100.0 for _ in range(requests)),
        0.0,
        scores=tuple((s, s > 0.2) for s in scores),
        feedback={name: tuple(values) for name, values in feedback.items()},
    )


def test_hallucination_rate_and_score_against_stable_with_a_minimum_sample() -> None:
    rollout = catalog(
        {"metric": "hallucination_rate", "max_over_stable": 0.1, "min_samples": 4},
        {"metric": "hallucination_score", "max": 0.5, "min_samples": 4},
    ).rollouts.by_id["ro"]
    grounded = quality(20, [0.0] * 10)
    # Too few scored answers in the canary: inconclusive, whatever they say.
    few = evaluate(rollout, 0.5, {"stable": grounded, "canary": quality(20, [1.0] * 3)})
    assert few.verdict == "inconclusive" and few.why == (
        "fewer than min_samples for hallucination_rate, hallucination_score"
    )
    bad = evaluate(rollout, 0.5, {"stable": grounded, "canary": quality(20, [1.0, 1.0, 0.0, 0.0, 0.5])})
    assert bad.verdict == "fail" and bad.why == "failed: hallucination_rate"
    rate, score = bad.checks
    assert (rate.canary, rate.stable, rate.bound, rate.ok) == (0.6, 0.0, pytest.approx(0.1), False)
    assert score.canary == pytest.approx(0.5) and score.ok
    assert bad.stats["canary"]["scored"] == 5 and bad.stats["canary"]["hallucination_rate"] == 0.6
    good = evaluate(rollout, 0.5, {"stable": quality(20, [0.0] * 9 + [1.0]), "canary": quality(20, [0.0] * 6)})
    assert good.verdict == "pass"
    # At 100 % there is no stable to compare with: the absolute bound alone applies.
    alone = evaluate(rollout, 1.0, {"canary": quality(20, [0.1] * 6)})
    assert alone.verdict == "pass" and alone.checks[0].stable is None
    # A plain ledger window (no scores at all) is inconclusive for a quality check.
    assert evaluate(rollout, 0.5, {"stable": VariantStats(20), "canary": VariantStats(20)}).verdict == "inconclusive"


def test_a_check_threshold_replaces_the_evaluators() -> None:
    check = {"metric": "hallucination_rate", "max": 0.3, "threshold": 0.6, "min_samples": 2}
    rollout = catalog(check).rollouts.by_id["ro"]
    window = {"stable": quality(10, [0.0] * 4), "canary": quality(10, [0.5, 0.5, 0.5, 0.7])}  # 0.5 > 0.2 but < 0.6
    [check] = evaluate(rollout, 0.5, window).checks
    assert check.canary == 0.25 and check.ok


def test_feedback_metrics_gate_on_the_mean_value_of_a_named_metric() -> None:
    check = {"metric": "feedback.thumbs_down", "max_over_stable": 0.2, "min_samples": 3}
    rollout = catalog(check).rollouts.by_id["ro"]
    result = evaluate(
        rollout,
        0.5,
        {"stable": quality(10, thumbs_down=[0, 0, 0, 1]), "canary": quality(10, thumbs_down=[1, 1, 0], csat=[5])},
    )
    assert result.verdict == "fail" and result.checks[0].canary == pytest.approx(2 / 3)
    assert result.stats["canary"]["feedback.thumbs_down"] == {"count": 3, "mean": pytest.approx(0.666667)}
    with pytest.raises(ValueError, match="unknown metric"):
        catalog({"metric": "feedback", "max": 1})
    with pytest.raises(ValueError, match="unknown metric"):
        catalog({"metric": "vibes", "max": 1})


@pytest.fixture
async def db(fresh_database_url: str) -> AsyncIterator[Database]:
    database = await open_database(fresh_database_url)
    yield database
    await database.close()


def ledger_row(request_id: str, team: str, variant: str | None, trace: str | None = None) -> dict[str, Any]:
    return {
        "ts": datetime.now(UTC),
        "request_id": request_id,
        "team": team,
        "kind": "request",
        "status": 200,
        "variant": variant,
        "rollout_id": "ro" if variant else None,
        "latency_ms": 10.0,
        "cost_nanos": 0,
        "prompt_tokens": 0,
        "completion_tokens": 0,
        "saved_nanos": 0,
        "trace_id": trace,
        "prompt_name": "p",
        "prompt_version": 2 if variant == "canary" else 1,
        "alias": "chat",
    }


def scored(request_id: str, variant: str, score: float, *, ts: datetime | None = None) -> ScoredAnswer:
    return ScoredAnswer(
        request_id=request_id,
        trace_id=None,
        team="t",
        alias="chat",
        prompt_name="p",
        prompt_version=1,
        variant=variant,
        rollout_id="ro",
        evaluator="groundedness",
        score=score,
        threshold=0.2,
        claims=2,
        unsupported=1 if score > 0.2 else 0,
        reasons=(),
        ts=ts or datetime.now(UTC),
    )


async def test_the_store_serves_every_replicas_scores_and_feedback(db: Database) -> None:
    registry = CollectorRegistry()
    writers = [
        ScoreWriter(
            db,
            queue_size=10,
            batch_size=5,
            flush_interval_s=0.05,
            written=Counter(f"w{i}", "", registry=registry),
            dropped=Counter(f"d{i}", "", ("reason",), registry=registry),
        )
        for i in range(2)
    ]
    writers[0].submit(scored("a", "canary", 1.0))
    writers[1].submit(scored("b", "canary", 0.0))  # another replica
    writers[1].submit(scored("c", "stable", 0.0))
    writers[1].submit(scored("old", "stable", 1.0, ts=datetime.now(UTC) - timedelta(hours=1)))
    for writer in writers:
        await writer.flush()
    async with db.engine.begin() as conn:
        await conn.execute(insert(ledger), [ledger_row("a", "t", "canary"), ledger_row("c", "t", "stable")])
    service = FeedbackService(db)
    principal = Principal(key_id="key_2", team="t", roles=frozenset({"app"}))
    await service.post(principal, parse_body(b'{"request_id": "a", "metric": "thumbs_down", "value": 1}'))
    await service.post(principal, parse_body(b'{"request_id": "c", "metric": "thumbs_down", "value": 0}'))
    found = await QualityMetrics(db).window("ro", datetime.now(UTC) - timedelta(minutes=5))
    canary, stable = found["canary"], found["stable"]
    assert isinstance(canary, QualityStats) and isinstance(stable, QualityStats)
    assert sorted(canary.scores) == [(0.0, False), (1.0, True)] and stable.scores == ((0.0, False),)
    assert canary.feedback == {"thumbs_down": (1.0,)} and stable.feedback == {"thumbs_down": (0.0,)}
    assert (canary.requests, stable.requests) == (1, 1)


async def test_feedback_only_from_the_team_that_made_the_request(db: Database) -> None:
    async with db.engine.begin() as conn:
        await conn.execute(
            insert(ledger), [ledger_row("mine", "t", "canary", "c" * 32), ledger_row("theirs", "other", None)]
        )
    flushed: list[bool] = []

    async def flush() -> None:
        flushed.append(True)

    service = FeedbackService(db, flush_ledger=flush)
    ours = Principal(key_id="key_9", team="t", roles=frozenset())
    with pytest.raises(NotFound) as missing:
        await service.post(ours, parse_body(b'{"request_id": "theirs", "metric": "x", "value": 1}'))
    assert missing.value.code == "request_not_found" and flushed == [True]  # looked again after a flush
    stored = await service.post(
        ours, parse_body(b'{"trace_id": "' + b"c" * 32 + b'", "metric": "csat", "value": 4, "comment": "ok"}')
    )
    assert (stored.request_id, stored.variant, stored.rollout_id, stored.value) == ("mine", "canary", "ro", 4.0)
    async with db.engine.connect() as conn:
        [row] = (await conn.execute(select(feedback))).mappings().all()
    assert (row["team"], row["key_id"], row["prompt_version"], row["comment"]) == ("t", "key_9", 2, "ok")


@pytest.mark.parametrize(
    "raw, param",
    [
        (b'{"metric": "x", "value": 1}', "request_id"),
        (b'{"request_id": "a", "trace_id": "' + b"a" * 32 + b'", "metric": "x", "value": 1}', "request_id"),
        (b'{"request_id": "a", "metric": "has space", "value": 1}', "metric"),
        (b'{"request_id": "a", "metric": "x", "value": "NaN"}', "value"),
        (b'{"request_id": "a", "metric": "x", "value": 1, "extra": 1}', "extra"),
        (b"not json", None),
    ],
)
def test_a_bad_feedback_body_is_a_400_naming_the_field(raw: bytes, param: str | None) -> None:
    with pytest.raises(InvalidRequest) as refused:
        parse_body(raw)
    assert refused.value.status == 400 and refused.value.param == param


@pytest.fixture
def receiver() -> Iterator[LangfuseReceiver]:
    with LangfuseReceiver() as running:
        yield running


def sender(
    receiver: LangfuseReceiver, *, secret: str | None = None, retries: int = 2, by_base_url: bool = False
) -> tuple[ScoreSender, Any]:
    registry = CollectorRegistry()
    where = {"base_url": receiver.url} if by_base_url else {"host": receiver.url}
    settings = TracingSettings(
        **where,
        public_key=receiver.public_key,
        secret_key=SecretStr(secret or receiver.secret_key),
        timeout_s=0.5,
        environment="test",
    )
    found = ScoreSender(
        settings,
        queue_size=3,
        retries=retries,
        sent=Counter("sent", "", registry=registry),
        dropped=Counter("dropped", "", ("reason",), registry=registry),
    )
    return found, registry


def score(i: int) -> LangfuseScore:
    return LangfuseScore(
        id=f"s{i}", trace_id="ab" * 16, name="hallucination", value=0.5, comment="c", metadata={"i": i}
    )


async def test_the_sender_delivers_retries_and_drops_with_counts(receiver: LangfuseReceiver) -> None:
    found, registry = sender(receiver)
    for i in range(4):  # one more than the queue holds
        found.submit(score(i))
    assert registry.get_sample_value("dropped_total", {"reason": "queue_full"}) == 1
    assert await found.send_batch() == 3
    assert [s["id"] for s in receiver.scores()] == ["s0", "s1", "s2"]
    assert receiver.scores()[0] == {
        "id": "s0",
        "traceId": "ab" * 16,
        "name": "hallucination",
        "value": 0.5,
        "dataType": "NUMERIC",
        "environment": "test",
        "comment": "c",
        "metadata": {"i": 0},
    }
    # Langfuse failing: each score is tried 1 + retries times, then dropped and counted.
    receiver.set_mode("error")
    found.submit(score(9))
    assert await found.send_batch() == 0
    assert registry.get_sample_value("dropped_total", {"reason": "send_failed"}) == 1
    receiver.set_mode("normal")
    # Wrong keys: a 401 is not retried.
    refused, counts = sender(receiver, secret="wrong")
    refused.submit(score(10))
    assert await refused.send_batch() == 0
    assert counts.get_sample_value("dropped_total", {"reason": "send_failed"}) == 1
    # A stop with Langfuse hanging is bounded, and what is left is counted.
    receiver.set_mode("hang")
    found.submit(score(11))
    started = time.monotonic()
    await found.close(time.monotonic() + 0.3)
    assert time.monotonic() - started < 5
    assert registry.get_sample_value("dropped_total", {"reason": "shutdown"}) == 1
    receiver.set_mode("normal")


async def test_the_sender_finds_langfuse_by_its_base_url_alone(receiver: LangfuseReceiver) -> None:
    # LANGFUSE_BASE_URL (the SDK's newer name) without LANGFUSE_HOST: the same endpoint.
    found, _ = sender(receiver, by_base_url=True)
    found.submit(score(41))
    assert await found.send_batch() == 1
    assert any(s["id"] == "s41" for s in receiver.scores())
