"""Stage 6, cache: answer repeated requests from the cache, and fill it from the upstream.

    policy off / sampling / no-store / backend down ─→ BYPASS: call upstream, store nothing
    no-cache ─────────────────────────────────────────→ MISS: call upstream, store the answer
    otherwise: look up
        hit (young enough for max-age) ──────────────→ HIT: answer from the entry
        the same key is already being computed ──────→ wait for that answer (single-flight)
        miss ─────────────────────────────────────────→ MISS: call upstream, store the answer

Single-flight has two levels. Within a process, the first miss for a key leads and the
others await its future. Across replicas, the leader's lookup also takes a short Redis lock;
a replica that finds the lock taken polls for the value instead of calling upstream. Waiters
give up after ``singleflight_wait_s`` and call upstream themselves.

Only a complete, successful answer is stored: a 200 JSON answer, or a stream that reached
``[DONE]`` without an error (stored when the stream is over, assembled by the answer tap,
``ctx.answer``: the cache keeps no copy of its own). A hit sets the request's
usage to the stored usage, its cost to zero, and ``saved_cost`` to what the upstream would
have charged; the budget stage comes after this one, so a hit is never charged nor refused
(when both live in Redis, the budget's reservation is sent beside the lookup and a hit
releases it unused: ``begin_reservation``).
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import secrets
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, Final

import orjson

from gateway.answer import Answer
from gateway.cache.base import CacheStore, LockState
from gateway.cache.entry import Entry
from gateway.cache.keys import (
    PurgeFilter,
    body_digest,
    deployment_fingerprint,
    digest_prefix,
    entry_key,
    is_deterministic,
)
from gateway.cache.metrics import CacheMetrics
from gateway.cache.policy import NO_DIRECTIVE, CacheRule, CacheRules, parse_cache_control, scopes_of
from gateway.catalog import Catalog, Deployment
from gateway.context import HeadStart, JsonReply, Reply, RequestContext, StreamReply, Usage
from gateway.pipeline_types import Handler
from gateway.wire import replay

log = logging.getLogger("gateway.cache")

_HIT: Final = (b"x-cache", b"HIT")
_MISS: Final = (b"x-cache", b"MISS")
_BYPASS: Final = (b"x-cache", b"BYPASS")
_MAX_PREFIXES: Final = 10_000

Flight = asyncio.Future[Entry | None]


class Cache:
    def __init__(self, store: CacheStore, metrics: CacheMetrics, *, wait_s: float) -> None:
        self.store = store
        self.metrics = metrics
        self._wait_s = wait_s
        # The Redis lock lives as long as waiters wait: a leader that died holds no one up longer.
        self._lock_ms = max(1, int(wait_s * 1000))
        self._rules = CacheRules()
        self._keys = _KeyBuilder()
        self._flights: dict[str, Flight] = {}
        self._token_prefix = secrets.token_hex(8) + "."
        self._tokens = itertools.count()
        #: The budget stage's ``begin``, set when both live in Redis (``Runtime.build``): the
        #: reservation leaves with the lookup instead of after its answer.
        self.begin_reservation: Callable[[RequestContext], HeadStart | None] | None = None

    async def __call__(self, ctx: RequestContext, call_next: Handler) -> Reply:
        alias = ctx.alias
        if alias is None or ctx.is_shadow:
            return await self._bypass(ctx, call_next)
        rule = self._rules.get(ctx.catalog, ctx.team, alias.name)
        endpoint = ctx.endpoint.value
        if rule is None or not (rule.nondeterministic or is_deterministic(endpoint, ctx.body)):
            return await self._bypass(ctx, call_next)
        directive = parse_cache_control(ctx.cache_control) if ctx.cache_control else NO_DIRECTIVE
        if directive.no_store or not self.store.available:
            return await self._bypass(ctx, call_next)
        try:
            key = self._keys.key(ctx, rule.scope, endpoint)
        except Exception as exc:
            # A body no key can be built for (something JSON cannot express, nesting past a
            # serialiser's limit): never guess a key, and never fail the request for it.
            log.warning("no cache key for this request; bypassing the cache",
                        extra={"request_id": ctx.request_id, "error": type(exc).__name__})
            return await self._bypass(ctx, call_next)
        if directive.no_cache:
            return await self._fill(ctx, call_next, key, rule, None, "")
        flight = self._flights.get(key)
        if flight is not None:
            entry = await self._wait(flight)
            if entry is not None and _fresh(entry, directive.max_age):
                return self._hit(ctx, entry)
            if not flight.done() and self._flights.get(key) is flight:
                # The leader is slower than waiters wait (a long stream, or stuck): let the
                # next request lead afresh instead of waiting on it too.
                del self._flights[key]
            return await self._fill(ctx, call_next, key, rule, None, "")
        return await self._lead(ctx, call_next, key, rule, directive.max_age)

    # -- admin -------------------------------------------------------------------------------

    def scopes_of_team(self, catalog: Catalog, team: str) -> tuple[str, ...]:
        return scopes_of(catalog.team(team), team)

    async def purge(self, selection: PurgeFilter) -> int:
        return await self.store.purge(selection)

    async def stats(self) -> dict[str, Any]:
        m = self.metrics
        return {
            "backend": self.store.name,
            "available": self.store.available,
            "requests": dict(m.tally),
            "errors": m.error_count,
            "bytes_written": m.bytes_written,
            "in_flight_keys": len(self._flights),
            **await self.store.stats(),
        }

    # -- the request path --------------------------------------------------------------------

    async def _lead(
        self, ctx: RequestContext, call_next: Handler, key: str, rule: CacheRule, max_age: float | None
    ) -> Reply:
        """Look the key up as the process's first asker, with the budget's reservation sent
        beside the lookup when there is one to send (``begin_reservation``)."""
        head = self.begin_reservation(ctx) if self.begin_reservation is not None else None
        ctx.head_start = head
        try:
            return await self._look_up(ctx, call_next, key, rule, max_age)
        finally:
            if head is not None and ctx.head_start is head:  # never taken: a hit, or an error before
                _release_head_start(ctx)

    async def _look_up(
        self, ctx: RequestContext, call_next: Handler, key: str, rule: CacheRule, max_age: float | None
    ) -> Reply:
        """Look the key up; same-key requests of this process wait on ``flight``."""
        flight: Flight = asyncio.get_running_loop().create_future()
        self._flights[key] = flight
        token = f"{self._token_prefix}{next(self._tokens)}" if self.store.shared else ""
        try:
            found = await self.store.lookup(key, token, self._lock_ms)
            entry = found.entry
            if entry is not None:
                token = ""  # a hit takes no lock
                if _fresh(entry, max_age):
                    self._land(key, flight, entry)
                    return self._hit(ctx, entry)
                # Older than this caller accepts: refresh it (waiters get the fresh answer).
            elif found.lock is LockState.HELD_ELSEWHERE:
                token = ""
                # Another replica's answer may take seconds: hold no reservation meanwhile (if it
                # never comes, the budget stage reserves as usual).
                _release_head_start(ctx)
                entry = await self.store.wait_for(key, self._wait_s)
                if entry is not None:
                    self._land(key, flight, entry)
                    return self._hit(ctx, entry)
            elif found.lock is not LockState.ACQUIRED:
                token = ""
        except BaseException:
            self._abandon(key, flight, token)
            raise
        if found.lock is LockState.FAILED:
            # The backend is in trouble: go on as if the cache were off, and release the
            # same-key waiters to do the same.
            self._land(key, flight, None)
            return await self._bypass(ctx, call_next)
        return await self._fill(ctx, call_next, key, rule, flight, token)

    async def _fill(
        self, ctx: RequestContext, call_next: Handler, key: str, rule: CacheRule, flight: Flight | None, token: str
    ) -> Reply:
        """Call upstream and keep the answer if it is complete and cacheable."""
        ctx.cache_status = "MISS"
        ctx.extra_headers.append(_MISS)
        self.metrics.result(ctx.team, "miss")
        try:
            reply = await call_next(ctx)
        except BaseException:
            self._abandon(key, flight, token)
            raise
        if isinstance(reply, JsonReply):
            if reply.status == 200 and len(reply.body) <= rule.max_entry_bytes:
                self._keep(key, flight, token, rule, _entry_of(ctx, reply.body, reply.data))
            else:
                self._abandon(key, flight, token)
            return reply
        if reply.status != 200:
            self._abandon(key, flight, token)
            return reply
        ctx.on_finish(functools.partial(self._stream_over, key, flight, token, rule))
        return reply

    def _stream_over(self, key: str, flight: Flight | None, token: str, rule: CacheRule, ctx: RequestContext) -> None:
        """Finisher of a streamed miss: store the assembled answer if the stream ended well."""
        answer = ctx.answer
        if answer is None or not answer.complete or ctx.error is not None:
            self._abandon(key, flight, token)
            return
        try:
            data = answer.completion(ctx.usage)
        except ValueError:
            self._abandon(key, flight, token)
            return
        body = orjson.dumps(data)
        if len(body) > rule.max_entry_bytes:
            self._abandon(key, flight, token)
            return
        self._keep(key, flight, token, rule, _entry_of(ctx, body, data))

    def _hit(self, ctx: RequestContext, entry: Entry) -> Reply:
        ctx.cache_status = "HIT"
        ctx.extra_headers.append(_HIT)
        ctx.extra_headers.append((b"age", str(int(entry.age(time.time()))).encode()))
        ctx.usage = Usage(entry.prompt_tokens, entry.completion_tokens)
        ctx.cost = 0.0
        deployment = _producer(ctx, entry)
        if deployment is not None:
            # Which model's answer this is, for the ledger and logs; nothing prices it again
            # (only the upstream call does), so the hit stays free.
            ctx.deployment = deployment
            ctx.saved_cost = deployment.price.cost(entry.prompt_tokens, entry.completion_tokens)
        self.metrics.result(ctx.team, "hit")
        self.metrics.saved_cost(ctx.team, ctx.saved_cost)
        if ctx.stream:
            data = entry.data if entry.data is not None else orjson.loads(entry.body)
            ctx.answer = Answer.of_completion(data, streamed=True)
            return StreamReply(_once(replay(data, ctx.include_usage)))
        ctx.answer = Answer.of_json(200, entry.body, entry.data)
        return JsonReply(200, entry.body, entry.data)

    async def _bypass(self, ctx: RequestContext, call_next: Handler) -> Reply:
        ctx.cache_status = "BYPASS"
        ctx.extra_headers.append(_BYPASS)
        self.metrics.result(ctx.team, "bypass")
        return await call_next(ctx)

    async def _wait(self, flight: Flight) -> Entry | None:
        try:
            async with asyncio.timeout(self._wait_s):
                # shield: a waiter that goes away must not cancel the answer others wait for.
                return await asyncio.shield(flight)
        except TimeoutError:
            return None

    def _keep(self, key: str, flight: Flight | None, token: str, rule: CacheRule, entry: Entry) -> None:
        self._land(key, flight, entry)
        self.store.put(key, entry, rule.ttl_ms, token)

    def _abandon(self, key: str, flight: Flight | None, token: str) -> None:
        self._land(key, flight, None)
        if token:
            self.store.release(key, token)

    def _land(self, key: str, flight: Flight | None, entry: Entry | None) -> None:
        if flight is None:
            return
        if not flight.done():
            flight.set_result(entry)
        if self._flights.get(key) is flight:
            del self._flights[key]


class _KeyBuilder:
    """Cache keys for requests.

    Everything in a key but the body's digest depends on the routing and the prompt only: the
    key's readable prefix and the digest's canonical prefix (deployment fingerprint included)
    are memoised per catalog, so a request serialises and hashes just its body.
    """

    def __init__(self) -> None:
        self._catalog: Catalog | None = None
        self._prefixes: dict[tuple[Any, ...], tuple[str, bytes]] = {}

    def key(self, ctx: RequestContext, scope: str, endpoint: str) -> str:
        alias = ctx.alias
        assert alias is not None
        if ctx.catalog is not self._catalog:
            self._catalog = ctx.catalog
            self._prefixes = {}
        deployments = ctx.deployments or alias.deployments
        memo = (tuple([d.id for d in deployments]), endpoint, scope, alias.name, ctx.prompt_name, ctx.prompt_version)
        prefixes = self._prefixes.get(memo)
        if prefixes is None:
            fingerprint = deployment_fingerprint((d.provider, d.model, d.base_url) for d in deployments)
            prefixes = (
                entry_key(scope, alias.name, ctx.prompt_name, ctx.prompt_version, ""),
                digest_prefix(fingerprint, endpoint, ctx.prompt_name, ctx.prompt_version),
            )
            if len(self._prefixes) < _MAX_PREFIXES:
                self._prefixes[memo] = prefixes
        return prefixes[0] + body_digest(prefixes[1], ctx.body)


def _release_head_start(ctx: RequestContext) -> None:
    head = ctx.head_start
    if head is not None:
        ctx.head_start = None
        head.release()


def _fresh(entry: Entry, max_age: float | None) -> bool:
    return max_age is None or entry.age(time.time()) <= max_age


def _entry_of(ctx: RequestContext, body: bytes, data: dict[str, Any] | None) -> Entry:
    usage = ctx.usage
    return Entry(
        created=time.time(),
        prompt_tokens=usage.prompt_tokens if usage is not None else 0,
        completion_tokens=usage.completion_tokens if usage is not None else 0,
        deployment_id=ctx.deployment.id if ctx.deployment is not None else "",
        body=body,
        data=data,
    )


def _producer(ctx: RequestContext, entry: Entry) -> Deployment | None:
    """The deployment that produced the entry; if the policy changed since, today's first choice."""
    if ctx.alias is not None:
        for candidate in ctx.alias.deployments:
            if candidate.id == entry.deployment_id:
                return candidate
    return ctx.deployments[0] if ctx.deployments else None


async def _once(payload: bytes) -> AsyncIterator[bytes]:
    yield payload
