"""The rollouts feature: the live book of weights, kept in step with the stored state.

``build_rollouts_feature(db)`` returns the book (which the routing strategy reads) and a
watcher that polls the state's revision (one small query) and swaps in every rollout's state
when it moved, so a pause, an abort or a step taken on any replica applies on every replica
within ``interval_s``. It also runs the analysis loop behind the controller lease
(``gateway.rollouts.lease``: Redis when configured, else the database) and returns the
per-variant counters, a sink for the record stage.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from prometheus_client import CollectorRegistry

from gateway.audit import AuditLog
from gateway.config.applied import PolicyStore
from gateway.features import CatalogSource, Closer, Feature
from gateway.prompts.store import PromptStore
from gateway.redis.wire import RedisWire
from gateway.rollouts.alerts import RolloutAlerts, RolloutCollector
from gateway.rollouts.analysis import Alerts, AlertsChain, LedgerMetrics, MetricSource, RolloutAnalyzer
from gateway.rollouts.book import RolloutBook
from gateway.rollouts.control import RolloutControl, ServiceSource
from gateway.rollouts.counters import VariantCounters
from gateway.rollouts.lease import REDIS_KEY, DatabaseLease, Lease, RedisLease
from gateway.rollouts.promotion import AliasPromoter
from gateway.rollouts.state import RolloutStateStore
from gateway.storage import Database

log = logging.getLogger("gateway.rollouts")


class RolloutWatcher:
    def __init__(self, store: RolloutStateStore, book: RolloutBook, *, interval_s: float = 0.5) -> None:
        self._store = store
        self._book = book
        self._interval = interval_s
        self._revision: int | None = None
        self._task: asyncio.Task[None] | None = None

    async def check(self) -> bool:
        revision = await self._store.revision()
        if revision == self._revision:
            return False
        self._book.use(await self._store.all())
        self._revision = revision
        return True

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="rollout-watcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                await self.check()
            except Exception:
                log.exception("rollout watcher failed; retrying")


@dataclass
class RolloutsFeature(Feature):
    book: RolloutBook | None = None
    store: RolloutStateStore | None = None
    watcher: RolloutWatcher | None = None
    control: RolloutControl | None = None
    analyzer: RolloutAnalyzer | None = None
    counters: VariantCounters | None = None  # a record-stage sink


def replica_name() -> str:
    """Who this process is, in lease records and check histories (host and pid)."""
    return f"{socket.gethostname()}:{os.getpid()}"


def build_lease(db: Database, *, redis_url: str = "", lease_s: float = 10.0) -> Lease:
    """The controller lease: in Redis when a URL is given (the gateway's own connection),
    else in the database. The Redis key is named after the database (its URL without the
    password): the lease guards that database's rollouts, and two gateways on one Redis but
    with databases of their own each have their controller."""
    if redis_url:
        wire = RedisWire(redis_url, timeout_s=min(1.0, lease_s / 3))
        guarded = hashlib.sha256(db.engine.url.render_as_string(hide_password=True).encode()).hexdigest()[:16]
        return RedisLease(wire, replica_name(), lease_s=lease_s, key=f"{REDIS_KEY}:{guarded}",
                          floor=RolloutStateStore(db).max_fence)
    return DatabaseLease(db, replica_name(), lease_s=lease_s)


async def build_rollouts_feature(
    db: Database, *, audit: AuditLog, catalog: CatalogSource, prompts: ServiceSource | None = None,
    registry: CollectorRegistry | None = None, interval_s: float = 0.5, analysis: bool = True,
    lease: Lease | None = None, lease_s: float = 10.0, metrics: MetricSource | None = None,
    annotator: Alerts | None = None,
) -> RolloutsFeature:
    """Load the stored states now (the first request already routes by them) and watch them,
    and run the analysis loop (every replica does; the holder of ``lease`` alone decides, see
    ``gateway.rollouts.analysis``; default: a database lease).

    ``prompts`` opens the prompt service (to move a label when a prompt rollout is promoted).
    ``metrics`` is where the analysis reads each variant's numbers (default: the ledger alone;
    live scoring passes one that adds scores and feedback), and ``annotator`` is told of each
    decision after the alerts (live scoring marks a rolled-back canary's traces).
    """
    book = RolloutBook()
    store = RolloutStateStore(db)
    watcher = RolloutWatcher(store, book, interval_s=interval_s)
    await watcher.check()
    watcher.start()

    async def refreshed() -> None:
        await watcher.check()  # this replica at once; the others at their next poll

    source = metrics or LedgerMetrics(db)  # the analysis' numbers, and status' live ones
    control = RolloutControl(store, audit, catalog, prompts=prompts, eval_passed=eval_gate(PromptStore(db)),
                             on_change=refreshed, metrics=source,
                             promote_alias=AliasPromoter(PolicyStore(db)))
    closers: list[Closer] = [watcher.stop]
    if registry is not None:
        registry.register(RolloutCollector(book, catalog))
    analyzer = None
    if analysis:
        alerts = RolloutAlerts(registry)

        async def took_lease(holder: str, generation: int) -> None:
            from gateway.audit import Actor

            # Who leads, from when: what a post-mortem of a failover reads first. Every
            # acquisition, rollouts or not: one started later must find its leader here.
            await audit.append(Actor(key_id="rollout-controller", team="system"), "rollout.controller",
                               "rollouts:controller", before=None,
                               after={"holder": holder, "generation": generation})

        told: Alerts = alerts if annotator is None else AlertsChain((alerts, annotator))
        analyzer = RolloutAnalyzer(control, catalog, source, alerts=told, tick_s=interval_s,
                                   lease=lease or build_lease(db, lease_s=lease_s), lease_s=lease_s,
                                   on_lead=took_lease, leading=alerts.leading)
        analyzer.start()
        closers += [alerts.close, analyzer.stop]  # run in reverse: the loop stops, then the webhooks drain
    return RolloutsFeature(closers=closers, book=book, store=store, watcher=watcher, control=control,
                           analyzer=analyzer, counters=VariantCounters(registry))


def eval_gate(prompts: PromptStore) -> Callable[[str, int], Awaitable[bool]]:
    """Whether the latest evaluation of a prompt version passed (the protected labels' gate)."""

    async def passed(name: str, version: int) -> bool:
        evaluation = await prompts.latest_eval(name, version)
        return evaluation is not None and evaluation.passed

    return passed
