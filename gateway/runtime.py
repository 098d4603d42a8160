"""The gateway's long-lived services, built once at start-up and passed explicitly.

No module keeps a global registry: the server, the admin API and the CLI each get a
``Runtime`` and reach the services through it. Policies can be swapped at run time
(``reload_policies``) without a restart; requests already running keep the catalog they
started with.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from redis.asyncio import Redis

from gateway.audit import AuditLog
from gateway.auth import Authenticate, KeyStore
from gateway.catalog import Catalog, build_catalog
from gateway.config.policies import load_policies
from gateway.config.settings import Settings
from gateway.observe import Metrics, Record
from gateway.parse import ParseRequest
from gateway.pipeline import build_pipeline
from gateway.pipeline_types import Handler, Stage
from gateway.providers import ProviderRegistry
from gateway.redis_conn import connect_redis
from gateway.resolve import PromptResolver, Resolve
from gateway.routing import Route
from gateway.storage import Database, open_database
from gateway.upstream import CallUpstream

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
    handler: Handler | None = None
    # Named checks behind /health/ready beyond storage (e.g. "redis").
    readiness_checks: dict[str, Callable[[], Awaitable[None]]] = field(default_factory=dict)
    # Run at shutdown in reverse order: flush queues before connections close.
    closers: list[Callable[[], Awaitable[None]]] = field(default_factory=list)

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

    def reload_policies(self) -> Catalog:
        """Validate and swap in the policy files; on error the old catalog stays."""
        catalog = build_catalog(load_policies(self.policies_dir))
        self.catalog = catalog
        self.providers.warm_up(catalog.providers_in_use())
        self.keys.invalidate()
        return catalog

    async def close(self) -> None:
        for closer in reversed(self.closers):
            try:
                await closer()
            except Exception:
                log.exception("shutdown step failed")
        await self.providers.close()
        await self.db.close()


async def create_runtime(settings: Settings) -> Runtime:
    catalog = build_catalog(load_policies(settings.resolve_path(settings.policies_dir)))
    db = await open_database(settings.database_url)
    keys = KeyStore(
        db,
        admin_key=settings.auth.admin_key.get_secret_value(),
        cache_ttl_s=settings.auth.key_cache_ttl_s,
    )
    metrics = Metrics()
    providers = ProviderRegistry()
    providers.warm_up(catalog.providers_in_use())
    record = Record(metrics, [], access_log_enabled=settings.server.access_log)
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
    runtime.build()
    return runtime
