"""The shadow feature's factory: the runner (a record-stage sink) and its comparison writer."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from gateway.features import Feature
from gateway.ledger.writer import LedgerMetrics, LedgerWriter
from gateway.routing.data_classes import permits as class_permits
from gateway.shadow.runner import Permits, ShadowMetrics, ShadowRunner, allow_all
from gateway.storage.schema import shadow_comparisons

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from gateway.catalog import Deployment
    from gateway.config.settings import Settings
    from gateway.context import RequestContext
    from gateway.core import Core
    from gateway.storage import Database


def data_class_permits(primary: RequestContext, deployment: Deployment) -> bool:
    """The data-class rule for a copy: the primary's class (set by its route stage) must be one
    the deployment may receive. The copy inherits that class (``ctx.fork``), so the pipeline
    enforces it again on every path the copy takes; this only keeps a copy that could go
    nowhere from being sent."""
    return class_permits(primary.data_class, deployment)


@dataclass
class ShadowFeature(Feature):
    runner: ShadowRunner | None = None


def build_shadows(
    settings: Settings,
    db: Database,
    *,
    core: Callable[[], Core | None],
    registry: CollectorRegistry,
    permits: Permits = allow_all,
) -> ShadowFeature:
    """The runner and its comparison writer (started: call inside the running loop).

    Install it after the ledger and the budgets: closers run in reverse, so at shutdown the
    running copies are cancelled (and record themselves, settling their shadow budget) first,
    then the comparisons still queued are written, then budgets and the ledger close.
    ``permits`` is the data-class check (see ``gateway.shadow.runner``).
    """
    writer = LedgerWriter(
        db,
        settings.ledger,
        table=shadow_comparisons,
        metrics=LedgerMetrics(registry, prefix="gateway_shadow_comparison", what="Shadow comparison"),
    )
    writer.start()
    runner = ShadowRunner(core, settings.shadow, ShadowMetrics(registry), writer, permits=permits)
    return ShadowFeature(closers=[writer.close, runner.close], runner=runner)
