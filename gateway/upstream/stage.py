"""Stage 9, the terminal: call the provider, retrying and falling back across deployments.

Retries happen only before the caller has seen a byte: providers return a stream only once
its first event has arrived, so every failure up to then can still go to the next attempt.
Errors the caller caused (an upstream 400) are not retried; timeouts, connection errors,
429 and 5xx are, with exponential backoff, first on the same deployment (``retries``) and
then on the alias' next deployment.

The data-class rule is checked again right here, at the provider-call boundary: a deployment
that may not receive the request's class (``Deployment.admits``) is never called, whatever the
plan says; it is skipped, logged and counted as an attempt with outcome ``forbidden``. The
route stage already filtered the plan, so this only ever fires on a bug, and then it fails
closed. When every permitted deployment failed and the rule withheld others (here or in the
plan, ``RoutingPlan.withheld``), the caller gets 403 ``data_class_forbidden`` naming the class
(and the last failure): no permitted deployment is left.

A deployment of another alias than the one routed to (a fallback alias, see
``gateway.routing.fallbacks``) that answers adds ``x-gateway-fallback: ALIAS``.

Every reply it returns carries the one answer tap (``gateway.answer``): ``ctx.answer`` is set
here, once, and every later reader (cache, usage, evaluators, tracing) reads that.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable

from gateway.answer import tap_reply
from gateway.catalog import Deployment
from gateway.context import Endpoint, Reply, RequestContext
from gateway.errors import DataClassForbidden, UpstreamError, UpstreamUnavailable
from gateway.providers import ProviderRegistry

log = logging.getLogger("gateway.upstream")

_BACKOFF_BASE_S = 0.05
_BACKOFF_MAX_S = 2.0


class CallUpstream:
    def __init__(
        self,
        providers: ProviderRegistry,
        *,
        on_attempt: Callable[[Deployment, float, str], None] | None = None,
    ) -> None:
        self._providers = providers
        # Called after every attempt with (deployment, seconds, outcome) — metrics hook.
        self._on_attempt = on_attempt

    async def __call__(self, ctx: RequestContext) -> Reply:
        last_error: UpstreamError | None = None
        attempt = 0
        data_class = ctx.data_class
        refused = 0
        for deployment in ctx.deployments:
            if not deployment.admits(data_class):
                refused += 1
                self._attempted(deployment, 0.0, "forbidden")
                log.error("a plan held a deployment the request's data class forbids; not called",
                          extra={"request_id": ctx.request_id, "deployment": deployment.label,
                                 "data_class": data_class})
                continue
            provider = self._providers.for_deployment(deployment)
            call = provider.chat if ctx.endpoint is Endpoint.CHAT else provider.embeddings
            for retry in range(deployment.retries + 1):
                if attempt:
                    delay = min(_BACKOFF_BASE_S * (2 ** (attempt - 1)), _BACKOFF_MAX_S)
                    await asyncio.sleep(delay * (0.5 + random.random()))
                attempt += 1
                ctx.attempts = attempt
                ctx.deployment = deployment
                started = time.perf_counter()
                try:
                    reply = await call(deployment, ctx)
                except UpstreamError as error:
                    keyless = not deployment.api_key and deployment.provider != "mock"
                    if keyless and error.status in (401, 403, 502, 503):
                        error.message += f" (the API key of {deployment.label} is empty: is its variable set?)"
                    elapsed = time.perf_counter() - started
                    ctx.upstream_seconds += elapsed
                    self._attempted(deployment, elapsed, error.code or "error")
                    if not error.retryable:
                        raise
                    last_error = error
                    log.warning(
                        "upstream attempt failed",
                        extra={
                            "request_id": ctx.request_id,
                            "deployment": deployment.label,
                            "attempt": attempt,
                            "retry": retry,
                            "error": error.message,
                        },
                    )
                    continue
                elapsed = time.perf_counter() - started
                ctx.upstream_seconds += elapsed
                self._attempted(deployment, elapsed, "ok")
                alias = ctx.alias
                if alias is not None and deployment.alias != alias.name:
                    ctx.extra_headers.append((b"x-gateway-fallback", deployment.alias.encode()))
                tap_reply(ctx, reply)
                return reply
        plan = ctx.plan
        withheld = refused + (plan.withheld if plan is not None else 0)
        if withheld and data_class is not None:
            # Every permitted deployment failed (or none was left): the rest may not have the data.
            failed = f" The permitted ones failed (last: {last_error.message})" if last_error is not None else ""
            raise DataClassForbidden(
                f"No deployment left for this request may receive data of class '{data_class}'; "
                f"{withheld} were withheld by the data-class policy.{failed}",
                data_class=data_class, param="model",
            )
        if last_error is None:
            raise UpstreamUnavailable("The model has no deployment to send the request to.")
        raise last_error

    def _attempted(self, deployment: Deployment, seconds: float, outcome: str) -> None:
        if self._on_attempt is not None:
            self._on_attempt(deployment, seconds, outcome)
