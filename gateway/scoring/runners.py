"""How a batch of answers is scored away from the event loop: the runners, and the worker side.

This module is what the scoring worker process imports, so it imports only the standard
library and the evaluators: the worker's resident memory measured 24 MB, against 57 MB when it
imported the serving side's modules.

- ``ProcessRunner`` (the default): one spawned worker process, never forked from the serving
  process, at niceness 10, holding the evaluator named in settings. A CPU-bound evaluator in a
  thread of the serving process would hold the GIL and delay the requests being served. A batch
  over its whole budget has its worker killed; a fresh one starts for the next batch. The
  worker exits by itself when the gateway that started it is gone (a SIGKILL).
- ``ThreadRunner``: an evaluator object in a thread of this process (tests; an evaluator that
  releases the GIL).

Each answer has a CPU budget: one that exceeds it is a ``timeout``, one whose evaluator raises
an ``evaluator_error``, never a score.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import multiprocessing
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Protocol

if TYPE_CHECKING:
    from gateway.scoring.evaluator import Evaluator, Judgement

log = logging.getLogger("gateway.scoring")

#: (context, question, answer) of one answer to score.
Case = tuple[str, str, str]


@dataclass(frozen=True, slots=True)
class Outcome:
    """What a runner made of one case: a judgement's numbers, or why there are none."""

    score: float = 0.0
    threshold: float = 0.5
    claims: int = 0
    unsupported: int = 0
    reasons: tuple[str, ...] = ()
    failure: str | None = None  # "evaluator_error" | "timeout"


def outcome_of(judgement: Judgement) -> Outcome:
    bad = judgement.unsupported
    reasons = tuple(f"{claim.text[:200]}: {'; '.join(claim.reasons)[:300]}" for claim in bad[:8])
    return Outcome(judgement.score, judgement.threshold, len(judgement.claims), len(bad), reasons)


def score_cases(evaluator: Evaluator, cases: Sequence[Case], budget_s: float) -> list[Outcome]:
    """Score each case; one that raises or exceeds ``budget_s`` is a failure, not a score."""
    found = []
    for context, question, answer in cases:
        started = time.process_time()
        try:
            judgement = evaluator.score(context, question, answer)
        except Exception:
            log.exception("evaluator failed on an answer")
            found.append(Outcome(failure="evaluator_error"))
            continue
        if time.process_time() - started > budget_s:
            found.append(Outcome(failure="timeout"))
            continue
        found.append(outcome_of(judgement))
    return found


class Runner(Protocol):
    """Scores a batch of cases away from the event loop."""

    @property
    def name(self) -> str: ...

    async def run(self, cases: Sequence[Case], budget_s: float) -> list[Outcome]: ...

    def close(self) -> None: ...


# -- in a separate process (the default) -----------------------------------------------------

_WORKER_EVALUATOR: Evaluator | None = None


#: The worker's niceness: scoring is background work, and on a busy machine the kernel should
#: run the serving process first.
WORKER_NICE: Final = 10
#: How often the worker checks that the gateway that started it is still there.
ORPHAN_CHECK_S: Final = 1.0


def _init_worker(name: str, model_dir: str | None) -> None:
    global _WORKER_EVALUATOR  # one evaluator per worker process, built once
    from gateway.scoring import build_evaluator

    with contextlib.suppress(OSError):
        os.nice(WORKER_NICE)
    # A gateway killed with SIGKILL cannot stop its worker: the worker notices it was orphaned
    # and exits, instead of sleeping on forever beside whatever replaces the gateway.
    parent = os.getppid()
    threading.Thread(target=_exit_when_orphaned, args=(parent,), daemon=True, name="orphan-watch").start()

    _WORKER_EVALUATOR = build_evaluator(name, model_dir=model_dir or None)


def _exit_when_orphaned(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(ORPHAN_CHECK_S)
    os._exit(0)


def _score_in_worker(cases: Sequence[Case], budget_s: float) -> list[Outcome]:
    assert _WORKER_EVALUATOR is not None
    return score_cases(_WORKER_EVALUATOR, cases, budget_s)


class ProcessRunner:
    """One worker process (spawned, never forked from the serving process) holds the evaluator."""

    def __init__(self, evaluator: str, model_dir: str | None = None, *, slack_s: float = 5.0) -> None:
        self.name = evaluator
        self._model_dir = model_dir
        # Added to a batch's budget: starting the process and loading the evaluator (a model).
        self._slack = slack_s
        self._pool: concurrent.futures.ProcessPoolExecutor | None = None

    def _executor(self) -> concurrent.futures.ProcessPoolExecutor:
        if self._pool is None:
            self._pool = concurrent.futures.ProcessPoolExecutor(
                1,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_init_worker,
                initargs=(self.name, self._model_dir),
            )
        return self._pool

    async def run(self, cases: Sequence[Case], budget_s: float) -> list[Outcome]:
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self._executor(), _score_in_worker, list(cases), budget_s)
        # The first batch also pays for starting the process and importing the evaluator.
        try:
            return await asyncio.wait_for(future, budget_s * len(cases) + self._slack)
        except TimeoutError:
            log.warning("scoring worker over its budget; restarted", extra={"answers": len(cases)})
            self._kill()
            return [Outcome(failure="timeout")] * len(cases)
        except concurrent.futures.process.BrokenProcessPool:
            log.error("scoring worker died; restarted", extra={"answers": len(cases)})
            self._kill()
            return [Outcome(failure="evaluator_error")] * len(cases)

    def _kill(self) -> None:
        pool, self._pool = self._pool, None
        if pool is None:
            return
        for process in list(getattr(pool, "_processes", {}).values()):
            with contextlib.suppress(Exception):
                process.kill()
        pool.shutdown(wait=False, cancel_futures=True)

    def close(self) -> None:
        self._kill()


class ThreadRunner:
    """An evaluator object in a thread of this process (tests, and evaluators that release the GIL)."""

    def __init__(self, evaluator: Evaluator) -> None:
        self.name = evaluator.name
        self._evaluator = evaluator

    async def run(self, cases: Sequence[Case], budget_s: float) -> list[Outcome]:
        future = asyncio.to_thread(score_cases, self._evaluator, list(cases), budget_s)
        try:
            return await asyncio.wait_for(future, budget_s * len(cases) + 1.0)
        except TimeoutError:
            return [Outcome(failure="timeout")] * len(cases)

    def close(self) -> None:
        return None
