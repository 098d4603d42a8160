"""The gateway's long-lived services, built once at start-up and passed explicitly.

No module keeps a global registry: the server, the admin API and the CLI each get a
``Runtime`` and reach the services through it. Policies can be swapped at run time
(``use_catalog``, fed by the policy watcher) without a restart; requests already running keep the catalog they
started with.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from gateway.audit import AuditLog
from gateway.auth import Authenticate, KeyStore
from gateway.budgets import install_budgets
from gateway.cache import build_cache
from gateway.catalog import Catalog, build_catalog
from gateway.config.applied import PolicyStore, PolicyWatcher, catalog_from_files, read_policy_files
from gateway.config.policies import load_policies
from gateway.config.settings import Settings
from gateway.ledger import LedgerWriter, start_ledger
from gateway.observe import Metrics, Record
from gateway.observe.access import AccessLog
from gateway.observe.logs import count_dropped_lines
from gateway.parse import ParseRequest
from gateway.pipeline import build_pipeline
from gateway.pipeline_types import Handler, Stage
from gateway.prompts import build_prompts
from gateway.providers import ProviderRegistry
from gateway.redact import SECRETS
from gateway.redis.conn import connect_redis
from gateway.resolve import PromptResolver, Resolve
from gateway.routing import Route
from gateway.storage import Database, open_database
from gateway.upstream import CallUpstream

if TYPE_CHECKING:
    from redis.asyncio import Redis

log = logging.getLogger("gateway.runtime")


class BudgetReporter(Protocol):
    """What the reports page and `gateway budgets status` need from the budget feature."""

    async def statuses(self, team: str | None = None) -> list[dict[str, Any]]:
        """Per team (and sub-budget): period, limit/spent/reserved/remaining/forecast in USD, resets_at."""
        ...


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
    redis: Redis | None = None
    prompts: PromptResolver | None = None
    # Optional stages, present when their feature is configured (see build()).
    cache: Stage | None = None
    budget: Stage | None = None
    budget_reporter: BudgetReporter | None = None
    # The cost ledger's writer (flush() before reading the ledger back, e.g. to rebuild budgets).
    ledger: LedgerWriter | None = None
    handler: Handler | None = None
    # The applied policy snapshot being served (None: the files under policies_dir, never applied).
    policy_version: int | None = None
    # Named checks behind /health/ready beyond storage (e.g. "redis").
    readiness_checks: dict[str, Callable[[], Awaitable[None]]] = field(default_factory=dict)
    # Run at shutdown in reverse order: flush queues before connections close.
    closers: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    # Told of each newly applied catalog, in the loop (the budget stage pre-builds tokenizers).
    catalog_listeners: list[Callable[[Catalog], None]] = field(default_factory=list)

    @property
    def policies_dir(self) -> Path:
        return self.settings.resolve_path(self.settings.policies_dir)

    def build(self) -> Handler:
        terminal = CallUpstream(self.providers, on_attempt=self._upstream_attempt)
        stages: list[Stage] = [
            self.record,  # outermost: sees every outcome, records last
            Authenticate(self.keys),
            ParseRequest(),
            Resolve(self.prompts),
            Route(),
        ]
        if self.cache is not None:
            stages.append(self.cache)  # before the budget: a hit costs nothing
        if self.budget is not None:
            stages.append(self.budget)
        self.handler = build_pipeline(stages, terminal)
        return self.handler

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


async def _initial_catalog(settings: Settings, store: PolicyStore) -> tuple[Catalog, int | None]:
    """The latest applied snapshot if there is one (it is what every replica serves), else the files."""
    policies_dir = settings.resolve_path(settings.policies_dir)
    snapshot = await store.latest()
    if snapshot is None:
        return build_catalog(load_policies(policies_dir)), None
    if policies_dir.is_dir() and read_policy_files(policies_dir) != snapshot.files:
        log.warning(
            "the policy files differ from the applied policies; serving the applied ones "
            "(run `gateway policies apply` to apply the files)",
            extra={"applied_version": snapshot.version},
        )
    return catalog_from_files(snapshot.files), snapshot.version


async def create_runtime(settings: Settings) -> Runtime:
    SECRETS.use("settings", settings.secret_values())
    db = await open_database(settings.database_url)
    policy_store = PolicyStore(db)
    catalog, policy_version = await _initial_catalog(settings, policy_store)
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
    runtime = Runtime(
        settings=settings,
        catalog=catalog,
        db=db,
        keys=keys,
        metrics=metrics,
        providers=providers,
        record=record,
        audit=AuditLog(db),
        redis=connect_redis(settings.redis),
    )
    if runtime.redis is not None:
        redis = runtime.redis

        async def ping_redis() -> None:
            await redis.ping()

        runtime.readiness_checks["redis"] = ping_redis
        runtime.closers.insert(0, redis.aclose)
    if access_log is not None:

        async def close_access_log() -> None:
            await asyncio.to_thread(access_log.close)

        runtime.closers.insert(0, close_access_log)  # closers run in reverse: this one last
    runtime.ledger = start_ledger(runtime)
    runtime.policy_version = policy_version
    watcher = PolicyWatcher(policy_store, runtime.use_catalog, version=policy_version or 0)
    watcher.start()
    runtime.closers.append(watcher.stop)
    runtime.cache = build_cache(runtime)
    await install_budgets(runtime)  # sets runtime.budget and runtime.budget_reporter
    await build_prompts(runtime)  # sets runtime.prompts, which build() hands to the resolve stage
    runtime.build()
    return runtime
