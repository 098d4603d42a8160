"""Scores Langfuse's own evaluators produced, pulled back by trace id: another rollout signal.

Langfuse runs its evaluators (LLM-as-a-judge templates, human annotation) server-side, minutes
after a trace arrives. ``ScorePuller`` brings their scores back into the gateway's store
(``langfuse_scores``, migration 92), where a rollout's analysis reads them as the metric
``langfuse.NAME`` (the mean value of the score ``NAME``), like ``feedback.NAME``.

**Which traces.** Every ``interval_s``, the traces of requests answered in *running* rollouts
(the ledger, joined with the rollout state) that are at least ``delay_s`` and at most
``lookback_s`` old and have no pulled score yet, newest first, at most ``max_traces`` a round.
A trace asked without a score waits ``retry_s`` before it is asked again (this replica's memory,
bounded by the look-back). Once one of its scores is stored the trace is done: scores an
evaluator adds later are not pulled, so ``delay_s`` should outlast the slowest evaluator.

**Who asks.** Only the replica holding the rollout controller lease (the one that runs the
analysis): one replica's calls, whatever the fleet's size. A new holder starts with an empty
memory and asks each pending trace once more; a score stored twice is stored once (Langfuse's
score id is the key).

**Each trace** is one ``GET /api/public/v2/scores?traceId=...`` (basic auth with the project's
keys), read page by page (``page_size``, at most ``max_pages``). A call Langfuse did not answer
(5xx, 429, timeout, no connection) is retried ``retries`` times with backoff; a 401 or 403 ends
the round (bad keys would fail every trace alike), another 4xx skips the trace. Every failure is
counted by reason and the trace is asked again at its next turn. Nothing here waits on a
request, nor a request on it.

**What is kept.** Numeric and boolean scores from the configured ``sources`` (default: ``EVAL``,
Langfuse's evaluators). The gateway's own scores are never pulled back: ``hallucination`` and
``rollout_rolled_back`` by name, and feedback by its id prefix (``fb_``).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Final

import aiohttp
import orjson
from sqlalchemy import and_, exists, insert, select
from sqlalchemy.exc import IntegrityError

from gateway.scoring.live import SCORE_NAME
from gateway.scoring.quality import ANNOTATION
from gateway.storage.schema import langfuse_scores, ledger, rollout_state
from gateway.throttled_log import ThrottledLog

if TYPE_CHECKING:
    from prometheus_client import Counter

    from gateway.config.settings import LangfusePullSettings, TracingSettings
    from gateway.storage import Database

log = logging.getLogger("gateway.scoring")

SCORES_PATH: Final = "/api/public/v2/scores"
#: The names of the scores the gateway itself puts on traces (never pulled back).
OWN_NAMES: Final = frozenset({SCORE_NAME, ANNOTATION})
#: The id prefix of feedback forwarded to Langfuse (``gateway.feedback``): its score ids.
FEEDBACK_ID_PREFIX: Final = "fb_"
_NUMERIC: Final = frozenset({"NUMERIC", "BOOLEAN"})
_BACKOFF_S: Final = 0.2
_LOG_EVERY_S: Final = 60.0


@dataclass(frozen=True, slots=True)
class PulledScore:
    """One score of a trace, as Langfuse's scores API lists it."""

    id: str
    trace_id: str
    name: str
    value: float
    source: str
    scored_at: datetime | None = None

    @property
    def own(self) -> bool:
        """Whether the gateway itself sent it (a hallucination score, a rollback mark, feedback)."""
        return self.name in OWN_NAMES or self.id.startswith(FEEDBACK_ID_PREFIX)


class PullFailed(Exception):
    """Langfuse did not list a trace's scores; ``reason`` is the counter's label."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


def _timestamp(raw: Any) -> datetime | None:
    if not isinstance(raw, str):
        return None
    try:
        found = datetime.fromisoformat(raw)
    except ValueError:
        return None
    return found if found.tzinfo is not None else found.replace(tzinfo=UTC)


def parse_scores(data: Any) -> tuple[list[PulledScore], int]:
    """The numeric scores of one page's ``data``, and how many others (categorical, malformed) it held."""
    if not isinstance(data, list):
        raise PullFailed("bad_answer", "the answer has no 'data' list")
    found: list[PulledScore] = []
    others = 0
    for item in data:
        value = item.get("value") if isinstance(item, dict) else None
        if (
            not isinstance(item, dict)
            or item.get("dataType", "NUMERIC") not in _NUMERIC
            or not isinstance(value, int | float)
            or isinstance(value, bool)
            or not math.isfinite(value)
            or not isinstance(item.get("id"), str)
            or not isinstance(item.get("name"), str)
            or not isinstance(item.get("traceId"), str)
        ):
            others += 1
            continue
        found.append(
            PulledScore(
                id=item["id"][:100],
                trace_id=item["traceId"],
                name=item["name"][:200],
                value=float(value),
                source=str(item.get("source") or "API")[:20],
                scored_at=_timestamp(item.get("timestamp")),
            )
        )
    return found, others


class ScoresClient:
    """Lists a trace's scores from Langfuse's public API, page by page, with retries."""

    def __init__(self, settings: TracingSettings, *, page_size: int = 50, max_pages: int = 4, retries: int = 2) -> None:
        self.endpoint = settings.langfuse_url + SCORES_PATH
        credentials = f"{settings.public_key}:{settings.secret_key.get_secret_value()}"
        self._authorization = "Basic " + base64.b64encode(credentials.encode()).decode()
        self._timeout_s = settings.timeout_s
        self._page_size = page_size
        self._max_pages = max_pages
        self._retries = retries
        self._session: aiohttp.ClientSession | None = None
        self.others = 0  # scores listed that are not numeric (categorical, corrections)

    async def of_trace(self, trace_id: str) -> list[PulledScore]:
        """Every numeric score of ``trace_id`` (up to ``max_pages`` pages); raises ``PullFailed``."""
        found: list[PulledScore] = []
        for page in range(1, self._max_pages + 1):
            answer = await self._get({"traceId": trace_id, "page": str(page), "limit": str(self._page_size)})
            scores, others = parse_scores(answer.get("data"))
            self.others += others
            found += [score for score in scores if score.trace_id == trace_id]
            meta = answer.get("meta")
            total = meta.get("totalPages") if isinstance(meta, dict) else None
            # Without a page count, a short page is the last one.
            if (total <= page) if isinstance(total, int) else len(answer["data"]) < self._page_size:
                break
        return found

    async def _get(self, query: dict[str, str]) -> dict[str, Any]:
        failure = PullFailed("unreachable", "no attempt")
        for attempt in range(self._retries + 1):
            if attempt:
                await asyncio.sleep(_BACKOFF_S * 2 ** (attempt - 1))
            try:
                return await self._once(query)
            except PullFailed as failed:
                failure = failed
                if failed.reason not in ("server_error", "timeout", "unreachable"):
                    break
        raise failure

    async def _once(self, query: dict[str, str]) -> dict[str, Any]:
        session = self._session
        if session is None or session.closed:
            session = self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self._timeout_s))
        headers = {"Authorization": self._authorization}
        try:
            async with session.get(self.endpoint, params=query, headers=headers) as response:
                body = await response.read()
                status = response.status
        except TimeoutError:
            raise PullFailed("timeout", f"no answer within {self._timeout_s}s") from None
        except aiohttp.ClientError as error:
            raise PullFailed("unreachable", type(error).__name__) from None
        if status in (401, 403):
            raise PullFailed("unauthorized", f"HTTP {status}")
        if status >= 500 or status == 429:
            raise PullFailed("server_error", f"HTTP {status}")
        if status >= 300:
            raise PullFailed("rejected", f"HTTP {status}")
        try:
            answer = orjson.loads(body)
        except ValueError:
            raise PullFailed("bad_answer", "the answer is not JSON") from None
        if not isinstance(answer, dict):
            raise PullFailed("bad_answer", "the answer is not a JSON object")
        return answer

    async def close(self) -> None:
        if self._session is not None:
            with contextlib.suppress(Exception):
                await self._session.close()


@dataclass(frozen=True, slots=True)
class PendingTrace:
    """A rollout request's trace whose evaluator scores are not pulled yet, and what rows copy."""

    trace_id: str
    request_id: str
    team: str
    prompt_name: str | None
    prompt_version: int | None
    variant: str | None
    rollout_id: str | None


class PulledStore:
    """The ``langfuse_scores`` table: which traces wait, and the scores pulled (each id once)."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def pending(self, oldest: datetime, newest: datetime, limit: int) -> list[PendingTrace]:
        """Traces of requests answered in running rollouts between ``oldest`` and ``newest``
        without a pulled score, newest first."""
        c, s = ledger.c, langfuse_scores.c
        query = (
            select(c.trace_id, c.request_id, c.team, c.prompt_name, c.prompt_version, c.variant, c.rollout_id)
            .join(
                rollout_state,
                and_(rollout_state.c.rollout_id == c.rollout_id, rollout_state.c.status == "running"),
            )
            .where(
                c.ts >= oldest,
                c.ts <= newest,
                c.kind == "request",
                c.status == 200,
                c.trace_id.is_not(None),
                ~exists().where(s.trace_id == c.trace_id),
            )
            .order_by(c.ts.desc())
            .limit(limit)
        )
        async with self._db.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        found: dict[str, PendingTrace] = {}
        for row in rows:
            found.setdefault(row[0], PendingTrace(*row))
        return list(found.values())

    async def store(self, pulled: Sequence[tuple[PendingTrace, PulledScore]], at: datetime) -> int:
        """Insert the scores not stored yet; returns how many were new."""
        if not pulled:
            return 0
        ids = [score.id for _, score in pulled]
        for attempt in range(2):
            try:
                async with self._db.engine.begin() as conn:
                    known = set(
                        (await conn.execute(select(langfuse_scores.c.id).where(langfuse_scores.c.id.in_(ids))))
                        .scalars()
                        .all()
                    )
                    rows = [_row(trace, score, at) for trace, score in pulled if score.id not in known]
                    if rows:
                        await conn.execute(insert(langfuse_scores), rows)
                return len(rows)
            except IntegrityError:  # a former holder stored some meanwhile: read them again
                if attempt:
                    raise
        return 0


def _row(trace: PendingTrace, score: PulledScore, at: datetime) -> dict[str, Any]:
    return {
        "id": score.id,
        "ts": at,
        "scored_at": score.scored_at,
        "trace_id": score.trace_id,
        "request_id": trace.request_id,
        "name": score.name,
        "value": score.value,
        "source": score.source,
        "team": trace.team,
        "prompt_name": trace.prompt_name,
        "prompt_version": trace.prompt_version,
        "variant": trace.variant,
        "rollout_id": trace.rollout_id,
    }


@dataclass(frozen=True, slots=True)
class PullMetrics:
    traces: Counter  # traces whose scores Langfuse listed
    stored: Counter  # scores stored
    skipped: Counter  # by reason: own, source, not_numeric, duplicate
    failures: Counter  # by reason: unauthorized, rejected, server_error, timeout, unreachable, bad_answer, store_failed


class ScorePuller:
    """The background task (see the module docstring); ``pull`` is one round."""

    def __init__(
        self,
        client: ScoresClient,
        store: PulledStore,
        metrics: PullMetrics,
        settings: LangfusePullSettings,
        *,
        leading: Callable[[], bool] = lambda: True,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._client = client
        self._store = store
        self._metrics = metrics
        self._settings = settings
        self.leading = leading  # set once the rollout controller exists (gateway.runtime)
        self._clock = clock
        self._asked: dict[str, float] = {}  # trace id -> monotonic time it was last asked
        self._task: asyncio.Task[None] | None = None
        self._warning = ThrottledLog(log, every_s=_LOG_EVERY_S)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="langfuse-score-puller")

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._settings.interval_s)
            if not self.leading():
                continue
            try:
                await self.pull()
            except Exception:
                log.exception("pulling scores from Langfuse failed; retrying next round")

    async def pull(self) -> int:
        """One round: ask the due traces, store their new scores; returns how many were stored."""
        config = self._settings
        now, started = self._clock(), time.monotonic()
        self._asked = {trace: at for trace, at in self._asked.items() if started - at < config.lookback_s}
        pending = await self._store.pending(
            now - timedelta(seconds=config.lookback_s), now - timedelta(seconds=config.delay_s), config.max_traces * 5
        )
        due = [p for p in pending if started - self._asked.get(p.trace_id, -math.inf) >= config.retry_s]
        due = due[: config.max_traces]
        gate = asyncio.Semaphore(config.concurrency)
        refused = asyncio.Event()  # bad keys: the rest of the round would fail alike
        found: dict[str, tuple[PendingTrace, PulledScore]] = {}
        others_before = self._client.others

        async def one(trace: PendingTrace) -> None:
            async with gate:
                if refused.is_set():
                    return
                self._asked[trace.trace_id] = time.monotonic()
                try:
                    scores = await self._client.of_trace(trace.trace_id)
                except PullFailed as failed:
                    self._metrics.failures.labels(failed.reason).inc()
                    self._warn(f"{failed.reason}: {failed}")
                    if failed.reason == "unauthorized":
                        refused.set()
                    return
            self._metrics.traces.inc()
            for score in scores:
                if score.own:
                    self._metrics.skipped.labels("own").inc()
                elif score.source not in config.sources:
                    self._metrics.skipped.labels("source").inc()
                elif score.id in found:
                    self._metrics.skipped.labels("duplicate").inc()  # listed twice (pages shifted)
                else:
                    found[score.id] = (trace, score)

        await asyncio.gather(*(one(trace) for trace in due))
        if self._client.others > others_before:
            self._metrics.skipped.labels("not_numeric").inc(self._client.others - others_before)
        try:
            # Stamped when stored, not when the round began: a round can outlast an analysis
            # interval (many traces, a slow Langfuse), and scores stamped with its start would
            # land behind the window of every check that could read them.
            stored = await self._store.store(list(found.values()), self._clock())
        except Exception:
            log.exception("could not store the scores pulled from Langfuse", extra={"scores": len(found)})
            self._metrics.failures.labels("store_failed").inc()
            for trace, _ in found.values():
                self._asked.pop(trace.trace_id, None)  # ask them again next round
            return 0
        self._metrics.stored.inc(stored)
        if len(found) > stored:
            self._metrics.skipped.labels("duplicate").inc(len(found) - stored)
        return stored

    def _warn(self, reason: str) -> None:
        self._warning.log("scores not pulled from Langfuse: %s", reason, endpoint=self._client.endpoint)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        await self._client.close()
