"""Wiring the prompt repository into a server runtime, or into a CLI command.

``build_prompts`` is the feature's factory: from explicit inputs it loads the signing key and
the label snapshot, starts the replica sync and returns a bundle holding the
``PromptRepository`` (the resolve stage calls it; the admin API reaches the service through it).
``open_service`` gives the CLI the same service straight on storage, without a server.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from prometheus_client import Counter

from gateway.audit import AuditLog
from gateway.auth import Principal
from gateway.catalog import Team
from gateway.config.applied import catalog_in_force
from gateway.config.settings import Settings
from gateway.context import RequestContext
from gateway.features import CatalogSource, Feature
from gateway.prompts.limits import RenderLimits
from gateway.prompts.resolver import CachedPromptResolver, VersionChooser
from gateway.prompts.signing import load_signer
from gateway.prompts.store import PromptStore
from gateway.prompts.sync import LabelSync, publish_change
from gateway.redis.conn import connect_redis
from gateway.storage import open_database

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from gateway.core import Core
    from gateway.prompts.service import PromptService
    from gateway.redis.wire import RedisWire
    from gateway.storage import Database

log = logging.getLogger("gateway.prompts")


class PromptRepository:
    """What a server process holds: the resolver for ``/v1`` and the service for ``/admin``."""

    def __init__(
        self, resolver: CachedPromptResolver, service: Callable[[], PromptService], sync: LabelSync
    ) -> None:
        self.resolver = resolver
        self._make_service = service
        self._service: PromptService | None = None
        self.sync = sync

    @property
    def service(self) -> PromptService:
        """The authoring side (push, labels, evals), built on first use by the admin API.

        Its modules (YAML and JSON Schema validation, Jinja2, the evaluators) are not needed
        to serve prompts, so a replica that is never administered never loads them.
        """
        if self._service is None:
            self._service = self._make_service()
        return self._service

    async def resolve(self, ctx: RequestContext, reference: str) -> str:
        return await self.resolver.resolve(ctx, reference)

    async def list_models(self, team: Team, created: int) -> list[dict[str, Any]]:
        return await self.resolver.list_models(team, created)


@dataclass
class PromptsFeature(Feature):
    repository: PromptRepository | None = None


async def build_prompts(
    settings: Settings,
    db: Database,
    *,
    registry: CollectorRegistry,
    redis: RedisWire | None,
    audit: AuditLog,
    catalog: CatalogSource,
    core: Callable[[], Core | None],
    version_chooser: VersionChooser | None = None,
) -> PromptsFeature:
    """The prompt feature: the resolver the resolve stage calls, the authoring service for the
    admin API (built on first use), and the label sync between replicas.

    ``core`` is a getter: the evaluation runner drives the request path, which is assembled
    after this feature.
    """
    signer = load_signer(settings)
    store = PromptStore(db)
    refused = Counter(
        "gateway_prompt_integrity_failures_total",
        "Requests refused because the prompt version failed its signature check.",
        ("prompt",),
        registry=registry,
    )
    limits = RenderLimits(timeout_s=settings.prompts.render_timeout_ms / 1000,
                          max_output_chars=settings.prompts.render_max_output_chars)
    resolver = CachedPromptResolver(store, signer, on_integrity_failure=lambda name: refused.labels(name).inc(),
                                    render_limits=limits, version_chooser=version_chooser)
    await resolver.refresh()
    sync = LabelSync(resolver.refresh, redis, settings.prompts.poll_interval_s)
    sync.start()

    async def changed() -> None:
        try:
            await resolver.refresh()  # this replica at once: the admin API reads its own writes
        except Exception as exc:
            # The change is committed and audited; the refresh loop will pick it up.
            log.warning("could not refresh prompt labels after a change", extra={"error": type(exc).__name__})
            sync.wake()
        await publish_change(redis)

    def service() -> PromptService:
        from gateway.prompts.evals import EvalRunner, default_evaluators
        from gateway.prompts.service import PromptService

        evaluators = default_evaluators()
        runner = EvalRunner(
            core,
            catalog,
            Principal(key_id="eval", team=settings.prompts.eval_team, roles=frozenset({"app"})),
            evaluators,
            concurrency=settings.prompts.eval_concurrency,
        )
        return PromptService(
            store, audit, signer,
            policy=lambda: catalog().bundle.prompts,
            catalog=catalog,
            evaluators=evaluators,
            on_change=changed,
            runner=runner,
        )

    repository = PromptRepository(resolver, service, sync)
    return PromptsFeature(closers=[sync.close], repository=repository)


@asynccontextmanager
async def open_service(settings: Settings) -> AsyncIterator[PromptService]:
    """The service for one CLI command: storage, policies and the signing key, no server.

    Label moves are announced on Redis when it is configured, so running replicas see them
    in milliseconds; otherwise they notice at their next poll.
    """
    from gateway.prompts.evals import default_evaluators
    from gateway.prompts.service import PromptService

    signer = load_signer(settings)
    db = await open_database(settings.database_url)
    try:
        # The applied policies are what the servers enforce (protected labels included);
        # the local files count only until a first `gateway policies apply`.
        catalog = (await catalog_in_force(settings, db)).catalog
    except BaseException:
        await db.close()
        raise
    redis = connect_redis(settings.redis)

    async def changed() -> None:
        await publish_change(redis)

    try:
        yield PromptService(
            PromptStore(db), AuditLog(db), signer,
            policy=lambda: catalog.bundle.prompts,
            catalog=lambda: catalog,
            evaluators=default_evaluators(),
            on_change=changed,
        )
    finally:
        if redis is not None:
            await redis.close()
        await db.close()
