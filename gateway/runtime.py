"""The gateway's long-lived services, built once at start-up and passed explicitly.

No module keeps a global registry: the server, the admin API and the CLI each get a
``Runtime`` and reach the services through it. Policies can be swapped at run time
(``use_catalog``, fed by the policy watcher) without a restart; requests already running keep the catalog they
started with.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from gateway.audit import AuditLog
from gateway.auth import Authenticate, KeyStore
from gateway.budgets import Budget, build_budgets
from gateway.cache import Cache, build_cache
from gateway.catalog import Catalog
from gateway.config.applied import PolicyStore, PolicyWatcher, catalog_in_force
from gateway.config.settings import Settings
from gateway.core import Core
from gateway.features import BudgetReporter, Closer, Feature
from gateway.ledger import LedgerWriter, build_ledger
from gateway.observe import Metrics, Record
from gateway.observe.access import AccessLog
from gateway.observe.logs import count_dropped_lines
from gateway.observe.loop import LoopWatch
from gateway.parse import ParseRequest
from gateway.pipeline import build_pipeline
from gateway.pipeline_types import Handler, Stage
from gateway.prompts import PromptRepository, build_prompts
from gateway.providers import ProviderRegistry
from gateway.redact import SECRETS
from gateway.redis.conn import connect_redis
from gateway.resolve import Resolve
from gateway.rollouts import RolloutBook
from gateway.rollouts.control import RolloutControl, using
from gateway.rollouts.feature import build_lease, build_rollouts_feature
from gateway.rollouts.prompt_choice import PromptRollouts
from gateway.routing import Downgrades, RolloutStrategy, Route, RoutingStrategy, ShadowStrategy, Weighted
from gateway.scoring.feature import build_scoring
from gateway.shadow.feature import build_shadows, data_class_permits
from gateway.shadow.runner import ShadowRunner
from gateway.storage import Database, open_database
from gateway.tracing import build_tracing
from gateway.upstream import CallUpstream
from gateway.usage import build_usage

if TYPE_CHECKING:
    from gateway.feedback import FeedbackService
    from gateway.prompts import PromptService
    from gateway.redis.wire import RedisWire

log = logging.getLogger("gateway.runtime")


@dataclass
class Runtime:
    settings: Settings
    catalog: Catalog
    db: Database
    keys: KeyStore
    metrics: Metrics
    providers: ProviderRegistry
    record: Record
    audit: AuditLog
    redis: RedisWire | None = None
    prompts: PromptRepository | None = None
    # Stages of optional features, present when the feature is configured (see build()).
    usage: Stage | None = None
    cache: Stage | None = None
    budget: Stage | None = None
    budget_reporter: BudgetReporter | None = None
    # The cost ledger's writer (flush() before reading the ledger back, e.g. to rebuild budgets).
    ledger: LedgerWriter | None = None
    routing: RoutingStrategy = field(default_factory=Weighted)
    downgrades: Downgrades | None = None  # budget downgrades (gateway.budgets.downgrade), for the route stage
    # Each rollout's live weight (gateway.rollouts), read by the rollout routing strategy.
    rollouts: RolloutBook | None = None
    rollout_control: RolloutControl | None = None  # start/pause/.../abort, for /admin/rollouts
    feedback: FeedbackService | None = None  # POST /v1/feedback
    shadows: ShadowRunner | None = None  # sends the plans' shadow copies after the answers
    handler: Handler | None = None  # the assembled pipeline
    core: Core | None = None  # the one entry to it: /v1, evaluations and shadow copies call it
    # The applied policy snapshot being served (None: the files under policies_dir, never applied).
    policy_version: int | None = None
    # Named checks behind /health/ready beyond storage (e.g. "redis").
    readiness_checks: dict[str, Closer] = field(default_factory=dict)
    # Run at shutdown in reverse order: flush queues before connections close.
    closers: list[Closer] = field(default_factory=list)
    # Told of each newly applied catalog, in the loop (the budget stage pre-builds tokenizers).
    catalog_listeners: list[Callable[[Catalog], None]] = field(default_factory=list)

    @property
    def policies_dir(self) -> Path:
        return self.settings.resolve_path(self.settings.policies_dir)

    def install(self, feature: Feature) -> None:
        """Take a feature's shutdown steps, readiness checks and catalog listeners."""
        self.closers.extend(feature.closers)
        self.readiness_checks.update(feature.readiness)
        self.catalog_listeners.extend(feature.catalog_listeners)

    def build(self) -> Core:
        """Assemble the request path, in the order a request meets the stages:

        1 record → 2 authenticate → 3 parse → 4 resolve → 5 route → 6 [cache] → 7 [usage]
        → 8 [budget] → 9 call upstream
        """
        stages: list[Stage] = [
            self.record,  # outermost: sees every outcome, records last
            Authenticate(self.keys),
            ParseRequest(),
            Resolve(self.prompts),
            Route(self.routing, downgrades=self.downgrades),
        ]
        if self.cache is not None:
            stages.append(self.cache)  # before usage and budget: a hit is priced at nothing
        if self.usage is not None:
            stages.append(self.usage)
        if self.budget is not None:
            stages.append(self.budget)
        self._head_start()
        self.handler = build_pipeline(stages, CallUpstream(self.providers, on_attempt=self._upstream_attempt))
        self.core = Core(self.handler)
        return self.core

    def _head_start(self) -> None:
        """When the cache and the budget both wait on Redis, the reservation leaves with the
        lookup: a miss does not wait for two round trips in a row (a hit releases it unused).
        In-process, neither waits, and beginning early would only cost a task."""
        cache, budget = self.cache, self.budget
        if (isinstance(cache, Cache) and cache.store.shared
                and isinstance(budget, Budget) and budget.backend.name == "redis"):
            cache.begin_reservation = budget.begin

    def _upstream_attempt(self, deployment: object, seconds: float, outcome: str) -> None:
        label = getattr(deployment, "label", "unknown")
        self.metrics.child(self.metrics.upstream, label, outcome).observe(seconds)

    def use_catalog(self, catalog: Catalog, version: int | None = None) -> None:
        """Swap in newly applied policies; requests already running keep the old catalog."""
        self.providers.warm_up(catalog.providers_in_use())
        SECRETS.use("catalog", catalog.secret_values())
        self.catalog = catalog
        self.policy_version = version
        self.keys.invalidate()
        for listener in self.catalog_listeners:
            listener(catalog)

    async def close(self) -> None:
        """Run the closers, then close providers and storage: every step bounded, so a stuck
        dependency (a Redis that stopped answering) cannot keep the process from exiting."""
        # Long enough for the ledger's own flush deadline (it reports what it could not write).
        limit = max(self.settings.server.graceful_timeout_s, self.settings.ledger.shutdown_timeout_s + 5.0)
        steps = [*reversed(self.closers), self.providers.close, self.db.close]
        for step in steps:
            try:
                await asyncio.wait_for(step(), limit)
            except TimeoutError:
                log.error("shutdown step did not finish in time; abandoned",
                          extra={"step": getattr(step, "__qualname__", repr(step)), "timeout_s": limit})
            except Exception:
                log.exception("shutdown step failed")


def warn_missing_keys(catalog: Catalog) -> None:
    """Name, at start-up, each deployment that will call its provider with no API key."""
    for alias in catalog.aliases.values():
        for deployment in alias.deployments:
            if deployment.provider != "mock" and not deployment.api_key:
                log.warning(
                    "a deployment's API key is empty: is the environment variable its api_key names set?",
                    extra={"alias": alias.name, "deployment": deployment.label},
                )


async def create_runtime(settings: Settings) -> Runtime:
    """Open storage, load the catalog in force, build every configured feature and the path."""
    SECRETS.use("settings", settings.secret_values())
    db = await open_database(settings.database_url)
    policy_store = PolicyStore(db)
    in_force = await catalog_in_force(settings, db)
    if in_force.files_differ:
        log.warning(
            "the policy files differ from the applied policies; serving the applied ones "
            "(run `gateway policies apply` to apply the files)",
            extra={"applied_version": in_force.version},
        )
    catalog = in_force.catalog
    SECRETS.use("catalog", catalog.secret_values())
    warn_missing_keys(catalog)
    keys = KeyStore(
        db,
        admin_key=settings.auth.admin_key.get_secret_value(),
        cache_ttl_s=settings.auth.key_cache_ttl_s,
    )
    metrics = Metrics()
    providers = ProviderRegistry()
    providers.warm_up(catalog.providers_in_use())
    count_dropped_lines(metrics.log_lines_dropped.labels("log").inc)
    access_log: AccessLog | None = None
    if settings.server.access_log:
        access_log = AccessLog(on_drop=metrics.log_lines_dropped.labels("access").inc)
    record = Record(metrics, [], access_log=access_log)
    redis = connect_redis(settings.redis)
    runtime = Runtime(
        settings=settings,
        catalog=catalog,
        db=db,
        keys=keys,
        metrics=metrics,
        providers=providers,
        record=record,
        audit=AuditLog(db),
        redis=redis,
        policy_version=in_force.version,
    )
    loop_watch = LoopWatch(metrics.registry)  # the loop's lag and collections' pauses, from now on
    loop_watch.start()
    runtime.closers.append(loop_watch.close)
    # Closers run in reverse: the access log closes last, then Redis, after every feature.
    if access_log is not None:

        async def close_access_log() -> None:
            await asyncio.to_thread(access_log.close)

        runtime.closers.append(close_access_log)
    if redis is not None:

        async def ping_redis() -> None:
            await redis.call(b"PING")

        runtime.install(Feature(closers=[redis.close], readiness={"redis": ping_redis}))

    def current() -> Catalog:
        return runtime.catalog

    ledger = build_ledger(db, settings.ledger, metrics.registry)
    runtime.install(ledger)
    runtime.ledger = ledger.writer
    assert ledger.sink is not None
    record.add_sink(ledger.sink)
    # Installed after the ledger, so its closer runs before the ledger's final flush.
    tracing = build_tracing(settings.tracing, metrics.registry, db=db)
    if tracing is not None:
        assert tracing.exporter is not None
        runtime.install(tracing)
        record.add_starter(tracing.exporter.start)
        record.add_sink(tracing.exporter)
    watcher = PolicyWatcher(policy_store, runtime.use_catalog, version=in_force.version or 0)
    watcher.start()
    runtime.install(Feature(closers=[watcher.stop]))
    cache = build_cache(settings, metrics, redis)
    if cache is not None:
        runtime.install(cache)
        runtime.cache = cache.stage
    usage = build_usage(settings, catalog)
    runtime.install(usage)
    runtime.usage = usage.stage
    assert usage.meter is not None
    budgets = await build_budgets(
        settings, db, catalog=current, registry=metrics.registry, counter=usage.meter,
        ledger=runtime.ledger, drain=record.drain,
    )
    runtime.install(budgets)
    runtime.budget, runtime.budget_reporter = budgets.stage, budgets.reporter
    runtime.downgrades = budgets.downgrades

    def prompt_service() -> AbstractAsyncContextManager[PromptService]:
        assert runtime.prompts is not None, "the prompt feature is built before any request"
        return using(runtime.prompts.service)

    # Live scoring: a record-stage sink, and the analysis' source of scores and feedback.
    flush_ledger = runtime.ledger.flush if runtime.ledger is not None else None
    scoring = build_scoring(settings, db, metrics.registry, flush_ledger=flush_ledger)
    runtime.install(scoring)
    runtime.feedback = scoring.feedback
    if scoring.scorer is not None:
        record.add_sink(scoring.scorer)
    rollout_settings = settings.rollouts
    rollouts = await build_rollouts_feature(
        db, audit=runtime.audit, catalog=current, prompts=prompt_service, registry=metrics.registry,
        metrics=scoring.quality, annotator=scoring.annotator,
        interval_s=rollout_settings.poll_interval_s, lease_s=rollout_settings.lease_s,
        lease=build_lease(db, redis_url=settings.redis.url, lease_s=rollout_settings.lease_s),
    )
    runtime.install(rollouts)
    assert rollouts.book is not None and rollouts.control is not None and rollouts.counters is not None
    if scoring.puller is not None and rollouts.analyzer is not None:
        scoring.puller.leading = rollouts.analyzer.leads  # pull where the analysis runs
    record.add_sink(rollouts.counters)
    runtime.rollouts, runtime.rollout_control = rollouts.book, rollouts.control
    # Rollouts decide the deployments; shadow rules add the copies to send afterwards.
    runtime.routing = ShadowStrategy(RolloutStrategy(rollouts.book))
    prompts = await build_prompts(
        settings, db, registry=metrics.registry, redis=redis, audit=runtime.audit, catalog=current,
        core=lambda: runtime.core, version_chooser=PromptRollouts(rollouts.book),
    )
    runtime.install(prompts)
    runtime.prompts = prompts.repository
    # Installed after the ledger and budgets: at shutdown its copies are cancelled first, so
    # they still settle their shadow budget and write their ledger rows.
    # A copy whose target no deployment of may receive the primary's data class is not sent.
    shadows = build_shadows(settings, db, core=lambda: runtime.core, registry=metrics.registry,
                            permits=data_class_permits)
    runtime.install(shadows)
    assert shadows.runner is not None
    runtime.shadows = shadows.runner
    record.add_sink(shadows.runner)
    runtime.build()
    return runtime
