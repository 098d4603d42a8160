"""Pulling back the scores Langfuse's own evaluators produced (gateway.scoring.pull): paging,
retries, failures counted, the gateway's own scores skipped, each score stored once, and the
``langfuse.NAME`` metric of a rollout's analysis (both store backends)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter
from pydantic import SecretStr
from sqlalchemy import insert, select
from test_quality_signals import catalog, ledger_row

from gateway.config.settings import LangfusePullSettings, TracingSettings
from gateway.rollouts.analysis import evaluate
from gateway.scoring.pull import PulledStore, PullMetrics, ScorePuller, ScoresClient
from gateway.scoring.quality import QualityMetrics, QualityStats
from gateway.storage import Database, open_database
from gateway.storage.schema import langfuse_scores, ledger, rollout_state
from gateway.testing.langfuse_receiver import LangfuseReceiver

CANARY_TRACE, STABLE_TRACE, OTHER_TRACE = "a" * 32, "b" * 32, "c" * 32


@pytest.fixture
async def db(fresh_database_url: str) -> AsyncIterator[Database]:
    database = await open_database(fresh_database_url)
    now = datetime.now(UTC)
    async with database.engine.begin() as conn:
        await conn.execute(
            insert(rollout_state),
            [
                {"rollout_id": "ro", "status": "running", "updated_at": now, "actor": "t", "history": "[]"},
                {"rollout_id": "done", "status": "aborted", "updated_at": now, "actor": "t", "history": "[]"},
            ],
        )
        rows = [
            ledger_row("r-canary", "t", "canary", CANARY_TRACE),
            ledger_row("r-stable", "t", "stable", STABLE_TRACE),
        ]
        rows.append({**ledger_row("r-done", "t", "canary", OTHER_TRACE), "rollout_id": "done"})  # not running
        rows.append(ledger_row("r-plain", "t", None, "d" * 32))  # in no rollout
        await conn.execute(insert(ledger), rows)
    yield database
    await database.close()


@pytest.fixture
def receiver() -> Iterator[LangfuseReceiver]:
    with LangfuseReceiver() as running:
        yield running


def counted(counter: Counter, reason: str | None = None) -> float:
    value = (counter.labels(reason) if reason else counter)._value.get()
    return float(value)


def puller(db: Database, url: str, *, secret: str = "sk-lf-test", timeout_s: float = 2.0, **config: Any) -> ScorePuller:
    registry = CollectorRegistry()
    tracing = TracingSettings(host=url, public_key="pk-lf-test", secret_key=SecretStr(secret), timeout_s=timeout_s)
    settings = LangfusePullSettings.model_validate({"delay_s": 0, "retries": 2, **config})
    client = ScoresClient(tracing, page_size=settings.page_size, max_pages=settings.max_pages, retries=settings.retries)
    metrics = PullMetrics(
        traces=Counter("traces", "", registry=registry),
        stored=Counter("stored", "", registry=registry),
        skipped=Counter("skipped", "", ("reason",), registry=registry),
        failures=Counter("failures", "", ("reason",), registry=registry),
    )
    return ScorePuller(client, PulledStore(db), metrics, settings)


async def stored(db: Database) -> list[dict[str, Any]]:
    async with db.engine.connect() as conn:
        result = await conn.execute(select(langfuse_scores).order_by(langfuse_scores.c.id))
        return [dict(row) for row in result.mappings()]


async def test_evaluator_scores_are_read_page_by_page_and_the_gateways_own_are_skipped(
    db: Database, receiver: LangfuseReceiver
) -> None:
    for i in range(5):
        receiver.add_score(CANARY_TRACE, "correctness", 0.9, score_id=f"eval-c{i}")
    receiver.add_score(STABLE_TRACE, "correctness", 0.1, score_id="eval-s0")
    # What the gateway itself sent, what another source wrote, what is not a number: not pulled.
    receiver.add_score(CANARY_TRACE, "hallucination", 1.0, source="API", score_id=f"{CANARY_TRACE}-hallucination")
    receiver.add_score(CANARY_TRACE, "thumbs_down", 1.0, source="API", score_id="fb_0123")
    receiver.add_score(CANARY_TRACE, "rollout_rolled_back", 1.0, source="API", score_id="mark")
    receiver.add_score(CANARY_TRACE, "tone", 1.0, source="ANNOTATION")
    receiver.add_score(CANARY_TRACE, "category", "rude", data_type="CATEGORICAL")
    receiver.add_score(OTHER_TRACE, "correctness", 0.5)  # its rollout is over
    pulling = puller(db, receiver.url, page_size=3)
    try:
        assert await pulling.pull() == 6
    finally:
        await pulling.close()

    rows = await stored(db)
    assert [(r["id"], r["trace_id"], r["variant"], r["value"], r["source"]) for r in rows] == [
        *((f"eval-c{i}", CANARY_TRACE, "canary", 0.9, "EVAL") for i in range(5)),
        ("eval-s0", STABLE_TRACE, "stable", 0.1, "EVAL"),
    ]
    assert rows[0]["request_id"] == "r-canary" and rows[0]["rollout_id"] == "ro" and rows[0]["prompt_version"] == 2
    reads = receiver.score_reads()
    assert {r["traceId"] for r in reads} == {CANARY_TRACE, STABLE_TRACE}  # only running rollouts' traces
    assert sorted(r["page"] for r in reads if r["traceId"] == CANARY_TRACE) == ["1", "2", "3", "4"]  # 10, 3 a page
    metrics = pulling._metrics
    assert counted(metrics.skipped, "own") == 3 and counted(metrics.skipped, "source") == 1
    assert counted(metrics.skipped, "not_numeric") == 1 and counted(metrics.traces) == 2

    # The analysis reads them as langfuse.NAME, per variant.
    found = await QualityMetrics(db).window("ro", datetime.now(UTC) - timedelta(minutes=5))
    canary, stable = found["canary"], found["stable"]
    assert isinstance(canary, QualityStats) and isinstance(stable, QualityStats)
    assert canary.langfuse == {"correctness": (0.9,) * 5} and stable.langfuse == {"correctness": (0.1,)}
    assert canary.summary()["langfuse.correctness"] == {"count": 5, "mean": 0.9}


async def test_each_score_is_stored_once_and_a_pulled_trace_is_not_asked_again(
    db: Database, receiver: LangfuseReceiver
) -> None:
    receiver.add_score(CANARY_TRACE, "correctness", 1.0, score_id="same")
    receiver.add_score(CANARY_TRACE, "correctness", 1.0, score_id="same")  # listed twice (pages shifted)
    first, second = puller(db, receiver.url, retry_s=3600), puller(db, receiver.url)
    try:
        assert await first.pull() == 1
        assert counted(first._metrics.skipped, "duplicate") == 1
        reads = len(receiver.score_reads())
        # STABLE_TRACE had no score: this replica waits retry_s before asking it again, and the
        # scored trace is done.
        assert await first.pull() == 0 and len(receiver.score_reads()) == reads
        # Another holder (an empty memory) asks only the trace still without a score.
        receiver.add_score(STABLE_TRACE, "correctness", 0.0, score_id="late")
        assert await second.pull() == 1
        assert [r["traceId"] for r in receiver.score_reads()[reads:]] == [STABLE_TRACE]
        # Two holders that both pulled the same scores store them once.
        store = PulledStore(db)
        pending = await store.pending(datetime.now(UTC) - timedelta(hours=1), datetime.now(UTC), 10)
        assert pending == []
    finally:
        await first.close()
        await second.close()
    assert [r["id"] for r in await stored(db)] == ["late", "same"]


async def test_scores_are_stamped_when_stored_not_when_their_round_began(
    db: Database, receiver: LangfuseReceiver
) -> None:
    # A round can outlast an analysis interval (many traces, a slow Langfuse): scores stamped with
    # the round's start landed behind every check's window and were never read (seen in CI).
    receiver.add_score(CANARY_TRACE, "correctness", 1.0, score_id="late-round")
    began = datetime.now(UTC)
    readings = iter([began, began + timedelta(seconds=90)])
    slow = puller(db, receiver.url)
    slow._clock = lambda: next(readings)
    try:
        assert await slow.pull() == 1
    finally:
        await slow.close()
    [row] = await stored(db)
    assert row["ts"].replace(tzinfo=UTC) == began + timedelta(seconds=90)
    window = await QualityMetrics(db).window("ro", began + timedelta(seconds=60))
    assert window["canary"].langfuse == {"correctness": (1.0,)}


async def test_a_store_race_between_two_holders_keeps_one_copy(db: Database, receiver: LangfuseReceiver) -> None:
    receiver.add_score(CANARY_TRACE, "correctness", 1.0, score_id="one")
    store = PulledStore(db)
    [pending, _] = await store.pending(datetime.now(UTC) - timedelta(hours=1), datetime.now(UTC), 10)
    client = ScoresClient(
        TracingSettings(host=receiver.url, public_key="pk-lf-test", secret_key=SecretStr("sk-lf-test"))
    )
    try:
        scores = await client.of_trace(CANARY_TRACE)
    finally:
        await client.close()
    now = datetime.now(UTC)
    assert await store.store([(pending, scores[0])], now) == 1
    assert await store.store([(pending, scores[0])], now) == 0
    assert len(await stored(db)) == 1


async def test_unanswered_calls_are_retried_and_failures_counted_never_raised(
    db: Database, receiver: LangfuseReceiver
) -> None:
    # A Langfuse that fails twice, then answers: retried with backoff, stored.
    calls = 0

    async def flaky(request: web.Request) -> web.Response:
        nonlocal calls
        calls += 1
        if calls <= 2:
            return web.Response(status=503 if calls == 1 else 429)
        score = {"id": "x", "traceId": request.query["traceId"], "name": "correctness", "value": 1, "source": "EVAL"}
        return web.json_response({"data": [score], "meta": {"page": 1, "limit": 50, "totalItems": 1, "totalPages": 1}})

    app = web.Application()
    app.router.add_get("/api/public/v2/scores", flaky)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    port = runner.addresses[0][1]
    pulling = puller(db, f"http://127.0.0.1:{port}", concurrency=1, max_traces=1)
    try:
        assert await pulling.pull() == 1
        assert calls == 3 and counted(pulling._metrics.failures, "server_error") == 0
    finally:
        await pulling.close()
        await runner.cleanup()

    # Bad keys: a 401 is never retried (and ends the round: every trace would fail alike).
    refused = puller(db, receiver.url, secret="wrong", concurrency=1, retry_s=0.001)
    failing = puller(db, receiver.url, retries=1, retry_s=0.001)
    hanging = puller(db, receiver.url, retries=0, timeout_s=0.2, retry_s=0.001)
    try:
        assert await refused.pull() == 0
        assert counted(refused._metrics.failures, "unauthorized") == 1 and len(receiver.score_reads()) == 0
        receiver.set_mode("error")
        assert await failing.pull() == 0
        assert counted(failing._metrics.failures, "server_error") == 1  # STABLE_TRACE, the one left
        receiver.set_mode("hang")
        assert await hanging.pull() == 0
        assert counted(hanging._metrics.failures, "timeout") == 1
        receiver.set_mode("stopped")
        assert await hanging.pull() == 0
        assert counted(hanging._metrics.failures, "unreachable") == 1
    finally:
        receiver.set_mode("normal")
        for each in (refused, failing, hanging):
            await each.close()
    assert len(await stored(db)) == 1


def test_a_check_on_langfuse_name_gates_like_feedback() -> None:
    check = {"metric": "langfuse.correctness_error", "max_over_stable": 0.2, "min_samples": 3}
    rollout = catalog(check).rollouts.by_id["ro"]

    def stats(*values: float) -> QualityStats:
        return QualityStats(10, 0, (100.0,) * 10, 0.0, langfuse={"correctness_error": values})

    assert evaluate(rollout, 0.5, {"canary": stats(1, 1, 1), "stable": stats(0, 0, 0)}).verdict == "fail"
    assert evaluate(rollout, 0.5, {"canary": stats(0.1, 0.1, 0.1), "stable": stats(0, 0, 0)}).verdict == "pass"
    few = evaluate(rollout, 0.5, {"canary": stats(1, 1), "stable": stats(0, 0, 0)})
    assert few.verdict == "inconclusive" and "min_samples" in few.why


async def test_the_background_task_asks_only_while_its_replica_leads(db: Database, receiver: LangfuseReceiver) -> None:
    receiver.add_score(CANARY_TRACE, "correctness", 1.0)
    pulling = puller(db, receiver.url, interval_s=0.02)
    leads = False
    pulling.leading = lambda: leads
    pulling.start()
    try:
        await asyncio.sleep(0.2)  # ten rounds' time, none of them its to run
        assert receiver.score_reads() == []
        leads = True
        for _ in range(200):
            if await stored(db):
                break
            await asyncio.sleep(0.02)
        assert [r["id"] for r in await stored(db)] == ["eval-1"]
    finally:
        await pulling.close()
