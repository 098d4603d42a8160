"""Budget counters in Redis: one atomic Lua script admits or refuses, across every replica.

Keys, all under the team's hash tag so one script may touch them together (Redis Cluster):

    gwb:{team}:daily:2025-06-01          hash   per scope field f ("t", "k:key_…", "a:alias"):
                                                i:f (built from the ledger), s:f spent, r:f reserved,
                                                al:f:PCT (alert claimed); ready, hz (the rebuild's
                                                horizon); expires a day after the period
    gwb:{team}:daily:2025-06-01:pending  hash   spend settled while the period was not built yet
    gwb:{team}:daily:2025-06-01:lock     string the rebuild lock
    gwb:{team}:res                       zset   reservation id → deadline (Redis clock, ms)
    gwb:{team}:resd                      hash   reservation id → {h, a, f, q, k, al} (JSON)
    gwb:{team}:gone                      zset   reservations charged by the reconciler (a day)
    gwb:{team}:seen                      string this Redis has had the team's counters before

Life of a request: ``reserve`` holds the worst case (``r:f += amount`` for every scope) only
if each hard scope has ``s + r + amount <= limit``; ``settle`` releases it and adds the actual
cost to ``s:f`` of the period it is committed in. Settlements are sent by one background task,
gathered for up to 10 ms, batched per team and retried while Redis is away, so the request
path pays one round trip.

A reservation carries a deadline that its replica's heartbeat keeps pushing forward. If the
replica dies, the deadline passes and the first replica to run its reconciler takes the
reservation out and **charges its reserved worst case** — the only amount known to bound what
the dead request could have spent upstream — and appends a ledger row for it
(``kind = reconciled``), so the ledger and the counters still agree.

After a data loss (FLUSHALL, a restart without persistence, eviction), the period hash is
missing: ``reserve`` answers "not built" and the replica rebuilds it under a lock from the
ledger. Every settlement carries the time it was settled, which is also its ledger row's time.
The rebuild picks a *horizon* (now - ``rebuild_settle_s``, after waiting that long when the
data was lost, so the horizon falls after the loss): ledger rows before it are summed, and a
settlement from before it is not charged again when it arrives late; spend settled from the
horizon on is counted by its settlement (parked in ``pending`` until the rebuild). Each cent is
so counted once, from the ledger or from its settlement. Until the rebuild finishes no request
is admitted: hard budgets wait (then 503), they never start again from zero.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from sqlalchemy.exc import SQLAlchemyError

from gateway import ids
from gateway.budgets.alerts import Alerts, crossings
from gateway.budgets.backend import BudgetUnavailable, Refusal, Reservation, ScopeState
from gateway.budgets.ledger_io import RECONCILED_KIND, reconciled_row, spent_by_field
from gateway.budgets.policy import (
    EXHAUSTED_PCT,
    REFUSAL_ALERTS_FROM_PCT,
    SHADOW_FIELD,
    SHADOW_KIND,
    Scope,
    TeamBudget,
    Window,
    window,
)
from gateway.config.settings import BudgetSettings
from gateway.redis.wire import RedisReplyError, RedisUnavailable, RedisWire, Script
from gateway.storage import Database

log = logging.getLogger("gateway.budget")

_BATCH = 256  # settlements per script call
# Settlements wait this long for others to share their script call, unless a full batch is
# already queued: at low rates one call per request cost ~60 µs of CPU each (concurrency 1).
# Safe for the limits: until it is settled, a reservation keeps its worst case held.
_SETTLE_GATHER_S = 0.01
_MAX_QUEUED = 200_000  # settlements waiting for Redis before new ones are dropped (and logged)
_EXPIRE_BATCH = 200
_HEARTBEAT_CHUNK = 500
_KEEP_AFTER_PERIOD = timedelta(days=1)

# Admit or refuse. KEYS: period, res, resd. ARGV: rid, amount, ttl_ms, record, n, then n (field, limit, hard) triples.
# Returns {1} admitted, {0, scope index, spent, reserved, alert newly claimed} refused, {-1} not built.
RESERVE = Script("reserve", """
local h = KEYS[1]
local amount = tonumber(ARGV[2])
local n = tonumber(ARGV[5])
for i = 1, n do
  local b = 5 + (i - 1) * 3
  local f = ARGV[b + 1]
  local v = redis.call('HMGET', h, 'i:' .. f, 's:' .. f, 'r:' .. f)
  if not v[1] then return {-1} end
  if ARGV[b + 3] == '1' then
    local spent = tonumber(v[2] or '0')
    local reserved = tonumber(v[3] or '0')
    local limit = tonumber(ARGV[b + 2])
    if spent + reserved + amount > limit then
      -- Alerts follow spend: only a refusal near the limit claims the 100 % alert (policy.py).
      local fresh = 0
      if spent * 100 >= limit * REFUSAL_ALERTS_FROM_PCT then
        fresh = redis.call('HSETNX', h, 'al:' .. f .. ':100', '1')
      end
      return {0, i, spent, reserved, fresh}
    end
  end
end
for i = 1, n do
  redis.call('HINCRBY', h, 'r:' .. ARGV[5 + (i - 1) * 3 + 1], ARGV[2])
end
local t = redis.call('TIME')
redis.call('ZADD', KEYS[2], t[1] * 1000 + math.floor(t[2] / 1000) + tonumber(ARGV[3]), ARGV[1])
redis.call('HSET', KEYS[3], ARGV[1], ARGV[4])
return {1}
""".replace("REFUSAL_ALERTS_FROM_PCT", str(REFUSAL_ALERTS_FROM_PCT)))

# Settle a batch of one team's requests. KEYS: res, resd, gone, then period and pending hashes.
# ARGV: count, then per settlement: rid, cost, held index (0: none), charge index, pending index,
# retry (1: an earlier attempt may have applied), settled-at (ms), nf, nf fields.
# Returns per settlement: status (0 skipped, 1 settled, 2 charged without reservation, 3 parked
# in pending, 4 already in the rebuilt sum), then the nf new spent values when it charged.
SETTLE = Script("settle", """
local res, resd = KEYS[1], KEYS[2]
local out = {}
local i = 2
for _ = 1, tonumber(ARGV[1]) do
  local rid, cost = ARGV[i], ARGV[i + 1]
  local held = tonumber(ARGV[i + 2])
  local charge, pending = KEYS[tonumber(ARGV[i + 3])], KEYS[tonumber(ARGV[i + 4])]
  local retry = ARGV[i + 5] == '1'
  local at = ARGV[i + 6]
  local nf = tonumber(ARGV[i + 7])
  local first = i + 8
  i = first + nf
  local status = 2
  local rec = redis.call('HGET', resd, rid)
  if rec then
    local r = cjson.decode(rec)
    redis.call('HDEL', resd, rid)
    redis.call('ZREM', res, rid)
    if held > 0 and redis.call('EXISTS', KEYS[held]) == 1 then
      for _, f in ipairs(r.f) do redis.call('HINCRBY', KEYS[held], 'r:' .. f, '-' .. r.a) end
    end
    status = 1
  elseif retry and not redis.call('ZSCORE', KEYS[3], rid) then
    -- An earlier attempt may have been applied before its reply was lost; only a reservation
    -- the reconciler took (listed in gone) is known not to have been settled yet.
    status = 0
  end
  out[#out + 1] = status
  if status > 0 and tonumber(cost) > 0 then
    local state = redis.call('HMGET', charge, 'ready', 'hz')
    if state[1] ~= '1' then
      local fs = {}
      for k = 0, nf - 1 do fs[#fs + 1] = ARGV[first + k] end
      redis.call('HSET', pending, rid, cjson.encode({c = cost, f = fs, t = at}))
      redis.call('EXPIRE', pending, 3456000)
      out[#out] = 3
    elseif state[2] and tonumber(at) < tonumber(state[2]) then
      -- Settled before the counters' horizon: its ledger row is in the sum they were rebuilt from.
      out[#out] = 4
    else
      for k = 0, nf - 1 do
        out[#out + 1] = redis.call('HINCRBY', charge, 's:' .. ARGV[first + k], cost)
      end
    end
  end
end
return out
""")

# Extend live reservations; with revive=1 also re-create those lost with Redis' data (not
# those the reconciler charged). KEYS: res, resd, gone. ARGV: ttl_ms, revive, then (rid, record)s.
HEARTBEAT = Script("heartbeat", """
local t = redis.call('TIME')
local deadline = t[1] * 1000 + math.floor(t[2] / 1000) + tonumber(ARGV[1])
local revived = 0
for i = 3, #ARGV, 2 do
  local rid = ARGV[i]
  if redis.call('ZSCORE', KEYS[1], rid) then
    redis.call('ZADD', KEYS[1], deadline, rid)
  elseif ARGV[2] == '1' and not redis.call('ZSCORE', KEYS[3], rid) then
    local r = cjson.decode(ARGV[i + 1])
    if redis.call('HGET', r.h, 'ready') == '1' then
      for _, f in ipairs(r.f) do redis.call('HINCRBY', r.h, 'r:' .. f, r.a) end
      redis.call('ZADD', KEYS[1], deadline, rid)
      redis.call('HSET', KEYS[2], rid, ARGV[i + 1])
      revived = revived + 1
    end
  end
end
return revived
""")

# Take out reservations past their deadline and charge their worst case. KEYS: res, resd, gone.
# ARGV: max. Returns {record, {new spent per field}} per expired reservation.
EXPIRE = Script("expire", """
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now - 86400000)
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
local out = {}
for _, rid in ipairs(due) do
  local rec = redis.call('HGET', KEYS[2], rid)
  redis.call('ZREM', KEYS[1], rid)
  redis.call('HDEL', KEYS[2], rid)
  redis.call('ZADD', KEYS[3], now, rid)
  if rec then
    local r = cjson.decode(rec)
    local spent = {}
    if redis.call('HGET', r.h, 'ready') == '1' then
      for _, f in ipairs(r.f) do
        redis.call('HINCRBY', r.h, 'r:' .. f, '-' .. r.a)
        spent[#spent + 1] = redis.call('HINCRBY', r.h, 's:' .. f, r.a)
      end
    end
    out[#out + 1] = {rec, spent}
  end
end
return out
""")

# Build counters from the ledger. KEYS: period, pending, seen. ARGV: horizon (ms), expire-at
# (unix s), then (field, spent) pairs: the ledger's sums over rows stamped before the horizon.
# Spend parked in pending since the loss is added when it was settled at or after the horizon
# (earlier spend is in the sums). A period already built only gets its missing fields.
INIT = Script("init", """
local h, pending = KEYS[1], KEYS[2]
local ready = redis.call('HGET', h, 'ready') == '1'
for i = 3, #ARGV, 2 do
  if redis.call('HSETNX', h, 'i:' .. ARGV[i], '1') == 1 then
    redis.call('HSET', h, 's:' .. ARGV[i], ARGV[i + 1])
  end
end
if ready then return 2 end
local horizon = tonumber(ARGV[1])
local parked = redis.call('HGETALL', pending)
for j = 2, #parked, 2 do
  local p = cjson.decode(parked[j])
  if tonumber(p.t) >= horizon then
    for _, f in ipairs(p.f) do
      if redis.call('HEXISTS', h, 'i:' .. f) == 1 then redis.call('HINCRBY', h, 's:' .. f, p.c) end
    end
  end
end
redis.call('HSET', h, 'ready', '1', 'hz', ARGV[1])
redis.call('EXPIREAT', h, ARGV[2])
redis.call('DEL', pending)
redis.call('SET', KEYS[3], '1')
return 1
""")

UNLOCK = Script("unlock", """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
""")


def team_tag(team: str) -> str:
    return "gwb:{" + team + "}"


def period_key(team: str, win: Window) -> str:
    return f"{team_tag(team)}:{win.label}"


@dataclass(slots=True)
class _Settlement:
    rid: str
    budget: TeamBudget
    scopes: tuple[Scope, ...]
    cost: int
    request_id: str
    held: Window | None  # where its reservation is held; None: spend without a reservation
    charge: Window  # the period its cost belongs to (when it was settled)
    at_ms: int  # when it was settled (wall clock, as the ledger row's time)
    retry: bool = False


RowWriter = Callable[[list[dict[str, Any]]], Awaitable[None]]


class RedisBackend:
    name = "redis"

    def __init__(
        self,
        wire: RedisWire,
        db: Database,
        alerts: Alerts,
        settings: BudgetSettings,
        *,
        budgets: Callable[[], Iterable[TeamBudget]],
        write_rows: RowWriter,
        flush_ledger: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self._wire = wire
        self._db = db
        self._alerts = alerts
        self._settings = settings
        self._budgets = budgets
        self._write_rows = write_rows
        self._flush_ledger = flush_ledger
        self._ttl_ms = int(settings.reservation_ttl_s * 1000)
        self._live: dict[str, Reservation] = {}
        self._queue: deque[_Settlement] = deque()
        self._sending = 0  # settlements taken off the queue whose batch is not answered yet
        self._wake = asyncio.Event()
        self._builds: dict[tuple[str, str], asyncio.Future[None]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._last_error_log = 0.0

    # -- admission -----------------------------------------------------------------------

    async def reserve(
        self,
        budget: TeamBudget,
        scopes: tuple[Scope, ...],
        amount: int,
        *,
        request_id: str,
        key_id: str | None,
        alias: str | None,
    ) -> Reservation | Refusal:
        win = budget.window()
        team = budget.team
        hkey = period_key(team, win)
        tag = team_tag(team)
        rid = ids.hex64()
        fields = [scope.field for scope in scopes]
        record = orjson.dumps(
            {"h": hkey, "a": str(amount), "f": fields, "q": request_id, "k": key_id, "al": alias, "l": win.label}
        )
        args: list[Any] = [rid, amount, self._ttl_ms, record, len(scopes)]
        for scope in scopes:
            args += (scope.field, scope.limit_nanos, 1 if scope.hard else 0)
        keys = [hkey, f"{tag}:res", f"{tag}:resd"]
        for _ in range(3):
            try:
                reply = await self._wire.evalsha(RESERVE, keys, args)
            except asyncio.CancelledError:
                self._abandon(rid, budget, scopes, request_id, win)
                raise
            except RedisUnavailable as exc:
                if exc.maybe_applied:
                    self._abandon(rid, budget, scopes, request_id, win)
                raise BudgetUnavailable(str(exc)) from None
            except RedisReplyError as exc:
                log.error("budget reserve script failed", extra={"team": team, "error": str(exc)})
                raise BudgetUnavailable("the budget reserve script failed") from None
            status = reply[0]
            if status == 1:
                reservation = Reservation(
                    rid=rid, budget=budget, window=win, scopes=scopes, amount=amount, request_id=request_id,
                    key_id=key_id, alias=alias, record=record,
                )
                self._live[rid] = reservation
                return reservation
            if status == 0:
                scope = scopes[reply[1] - 1]
                self._alerts.metrics.saw_spend(team, scope, win, reply[2])
                if reply[4] == 1:
                    self._alerts.fire(budget, scope, EXHAUSTED_PCT, reply[2], win)
                return Refusal(scope, reply[2], reply[3], win)
            await self._ensure_built(budget, win)
        raise BudgetUnavailable("the budget counters are still being rebuilt")

    def _abandon(self, rid: str, budget: TeamBudget, scopes: tuple[Scope, ...], request_id: str, win: Window) -> None:
        # The reserve may have run even though its answer never came back: release it (a
        # no-op if it did not), or the reconciler would later charge its worst case.
        self._enqueue(_Settlement(rid, budget, scopes, 0, request_id, win, win, _now_ms(), retry=True))

    # -- settling ------------------------------------------------------------------------

    def settle(self, reservation: Reservation, cost_nanos: int) -> None:
        if reservation.settled:
            return
        reservation.settled = True
        # Out of the heartbeat's set before the settlement is sent, so a heartbeat can never
        # re-create a reservation that was just released.
        self._live.pop(reservation.rid, None)
        self._enqueue(
            _Settlement(
                reservation.rid, reservation.budget, reservation.scopes, cost_nanos, reservation.request_id,
                reservation.window, reservation.budget.window(), _now_ms(),
            )
        )

    def charge(self, budget: TeamBudget, scopes: tuple[Scope, ...], cost_nanos: int, *, request_id: str) -> None:
        if cost_nanos > 0:
            win = budget.window()
            self._enqueue(
                _Settlement("c" + secrets.token_hex(8), budget, scopes, cost_nanos, request_id, None, win, _now_ms())
            )

    def _enqueue(self, settlement: _Settlement) -> None:
        if len(self._queue) >= _MAX_QUEUED:
            log.error("budget settlement queue full; spend not counted", extra={"team": settlement.budget.team})
            return
        self._queue.append(settlement)
        self._wake.set()

    async def _settler(self) -> None:
        backoff = 0.05
        while True:
            await self._wake.wait()
            if len(self._queue) < _BATCH:
                await asyncio.sleep(_SETTLE_GATHER_S)
            self._wake.clear()
            while self._queue:
                batch = [self._queue.popleft() for _ in range(min(len(self._queue), _BATCH * 8))]
                self._sending = len(batch)
                try:
                    failed = await self._send(batch)
                except Exception:
                    # A bug must not stop every later settlement: drop this batch, loudly.
                    log.exception("budget settlements dropped", extra={"count": len(batch)})
                    continue
                finally:
                    self._sending = 0
                if failed:
                    self._queue.extendleft(reversed(failed))
                    self._log_unavailable("budget settlements waiting for Redis", len(self._queue))
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 2.0)
                else:
                    backoff = 0.05

    async def _send(self, batch: list[_Settlement]) -> list[_Settlement]:
        groups: dict[str, list[_Settlement]] = {}
        for item in batch:
            groups.setdefault(item.budget.team, []).append(item)
        calls = []
        chunks = []
        for team, items in groups.items():
            for start in range(0, len(items), _BATCH):
                chunk = items[start : start + _BATCH]
                chunks.append(chunk)
                calls.append(self._settle_chunk(team, chunk))
        results = await asyncio.gather(*calls, return_exceptions=True)
        failed: list[_Settlement] = []
        for chunk, result in zip(chunks, results, strict=True):
            if isinstance(result, RedisUnavailable):
                for item in chunk:
                    item.retry = item.retry or result.maybe_applied
                failed.extend(chunk)
            elif isinstance(result, BaseException):
                log.error("budget settle script failed; spend dropped", exc_info=result,
                          extra={"team": chunk[0].budget.team, "count": len(chunk)})
        return failed

    async def _settle_chunk(self, team: str, chunk: list[_Settlement]) -> None:
        tag = team_tag(team)
        keys = [f"{tag}:res", f"{tag}:resd", f"{tag}:gone"]
        index: dict[str, int] = {}

        def key_index(name: str) -> int:
            found = index.get(name)
            if found is None:
                keys.append(name)
                found = index[name] = len(keys)
            return found

        args: list[Any] = [len(chunk)]
        for item in chunk:
            charge_key = period_key(team, item.charge)
            held = key_index(period_key(team, item.held)) if item.held is not None else 0
            args += (item.rid, item.cost, held, key_index(charge_key), key_index(charge_key + ":pending"),
                     1 if item.retry else 0, item.at_ms, len(item.scopes))
            args += (scope.field for scope in item.scopes)
        reply = await self._wire.evalsha(SETTLE, keys, args, later=True)  # leaves with the next reserve
        await self._after_settle(chunk, reply)

    async def _after_settle(self, chunk: list[_Settlement], reply: list[int]) -> None:
        position = 0
        for item in chunk:
            status = reply[position]
            position += 1
            if status not in (1, 2) or item.cost <= 0:
                continue  # nothing charged (skipped, parked, or already in the rebuilt sum)
            spent_after = reply[position : position + len(item.scopes)]
            position += len(item.scopes)
            for scope, after in zip(item.scopes, spent_after, strict=True):
                self._alerts.metrics.saw_spend(item.budget.team, scope, item.charge, after)
                for pct in crossings(scope.limit_nanos, item.budget.thresholds, after - item.cost, after):
                    await self._claim_and_fire(item.budget, scope, pct, after, item.charge)

    async def _claim_and_fire(self, budget: TeamBudget, scope: Scope, pct: float, spent: int, win: Window) -> None:
        try:
            fresh = await self._wire.call("HSETNX", period_key(budget.team, win), f"al:{scope.field}:{pct:g}", 1)
        except RedisUnavailable:
            fresh = 1  # better a rare duplicate alert than a lost one
        if fresh == 1:
            self._alerts.fire(budget, scope, pct, spent, win)

    # -- building counters from the ledger -----------------------------------------------

    async def _ensure_built(self, budget: TeamBudget, win: Window) -> None:
        key = (budget.team, win.label)
        task = self._builds.get(key)
        if task is None:
            task = asyncio.ensure_future(self._build(budget, win))
            self._builds[key] = task
            task.add_done_callback(lambda _: self._builds.pop(key, None))
        await asyncio.shield(task)

    async def _build(self, budget: TeamBudget, win: Window) -> None:
        hkey = period_key(budget.team, win)
        lock = hkey + ":lock"
        token = secrets.token_hex(8)
        fields = [scope.field for scope in budget.all_scopes()]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._settings.rebuild_wait_s
        lock_ms = int(self._settings.rebuild_wait_s * 1000)
        try:
            while not await self._built(hkey, fields):
                if await self._wire.call("SET", lock, token, "NX", "PX", lock_ms) is not None:
                    try:
                        await self._rebuild(budget, win, hkey, fields, deadline)
                    finally:
                        with contextlib.suppress(RedisUnavailable):  # else it expires on its own
                            await self._wire.evalsha(UNLOCK, [lock], [token])
                    break
                if loop.time() > deadline:
                    raise BudgetUnavailable("another replica's budget rebuild did not finish in time")
                await asyncio.sleep(0.05)
            # Reservations of requests still running here may have gone with Redis' data.
            await self._heartbeat(revive_team=budget.team)
        except RedisUnavailable as exc:
            raise BudgetUnavailable(str(exc)) from None
        except RedisReplyError as exc:
            log.error("budget rebuild script failed", extra={"team": budget.team, "error": str(exc)})
            raise BudgetUnavailable("the budget rebuild failed") from None
        except (SQLAlchemyError, OSError) as exc:
            raise BudgetUnavailable(f"cannot read the ledger to rebuild budgets: {type(exc).__name__}") from None

    async def _built(self, hkey: str, fields: list[str]) -> bool:
        values = await self._wire.call("HMGET", hkey, "ready", *(f"i:{name}" for name in fields))
        return all(value is not None for value in values)

    async def _rebuild(self, budget: TeamBudget, win: Window, hkey: str, fields: list[str], deadline: float) -> None:
        tag = team_tag(budget.team)
        settle = self._settings.rebuild_settle_s
        full = await self._wire.call("HGET", hkey, "ready") != b"1"
        if full:
            lost = not await self._wire.call("EXISTS", f"{tag}:seen")
            if self._flush_ledger is not None:
                await self._flush_ledger()
            if lost and settle > 0:
                # Counted spend was lost at most now: waiting ``settle`` puts the horizon after
                # the loss, so every settlement Redis had applied is a ledger row before it.
                remaining = deadline - asyncio.get_running_loop().time()
                await asyncio.sleep(max(0.0, min(settle, remaining - 1.0)))
            self._alerts.metrics.rebuilds.labels(budget.team).inc()
            log.warning(
                "budget counters rebuilt from the ledger",
                extra={"team": budget.team, "period": win.label,
                       "reason": "lost or first use" if lost else "new period"},
            )
        # The horizon: ledger rows stamped before it have had ``settle`` seconds to be written
        # and are summed; spend settled from it on is counted by its settlement instead.
        horizon = datetime.now(UTC) - timedelta(seconds=settle)
        spent = await spent_by_field(self._db, budget, win, before=horizon)
        args: list[Any] = [int(horizon.timestamp() * 1000), int((win.end + _KEEP_AFTER_PERIOD).timestamp())]
        for name in fields:
            args += (name, spent.get(name, 0))
        await self._wire.evalsha(INIT, [hkey, hkey + ":pending", f"{tag}:seen"], args)

    # -- keeping reservations alive, reconciling dead ones ------------------------------

    async def _heartbeat(self, revive_team: str | None = None) -> None:
        by_team: dict[str, list[Reservation]] = {}
        for reservation in self._live.values():
            if revive_team is None or reservation.budget.team == revive_team:
                by_team.setdefault(reservation.budget.team, []).append(reservation)
        for team, reservations in by_team.items():
            tag = team_tag(team)
            for start in range(0, len(reservations), _HEARTBEAT_CHUNK):
                args: list[Any] = [self._ttl_ms, 1 if revive_team else 0]
                for reservation in reservations[start : start + _HEARTBEAT_CHUNK]:
                    if not reservation.settled:
                        args += (reservation.rid, reservation.record)
                if len(args) > 2:
                    revived = await self._wire.evalsha(HEARTBEAT, [f"{tag}:res", f"{tag}:resd", f"{tag}:gone"], args)
                    if revived:
                        log.warning("budget reservations re-created after Redis lost them",
                                    extra={"team": team, "count": revived})

    async def _reconcile(self) -> None:
        budgets = {budget.team: budget for budget in self._budgets()}
        teams = set(budgets) | {reservation.budget.team for reservation in self._live.values()}
        for team in teams:
            tag = team_tag(team)
            expired = await self._wire.evalsha(EXPIRE, [f"{tag}:res", f"{tag}:resd", f"{tag}:gone"], [_EXPIRE_BATCH])
            if not expired:
                continue
            rows = []
            budget = budgets.get(team)
            for raw, spent_after in expired:
                record = orjson.loads(raw)
                amount = int(record["a"])
                if not spent_after:
                    continue  # its period's counters are gone; the rebuild took the ledger's word
                win = _window_of(record["l"])
                kind = SHADOW_KIND if record["f"] == [SHADOW_FIELD] else RECONCILED_KIND
                rows.append(reconciled_row(team=team, request_id=str(record["q"]), key_id=record.get("k"),
                                           alias=record.get("al"), cost_nanos=amount, window=win, kind=kind))
                self._alerts.metrics.reconciled.labels(team).inc()
                log.warning(
                    "dead request's budget reservation charged at its worst case",
                    extra={"team": team, "request_id": record["q"], "cost_nanos": amount, "period": record["l"]},
                )
                if budget is not None:
                    scopes = {scope.field: scope for scope in budget.all_scopes()}
                    for name, after in zip(record["f"], spent_after, strict=False):
                        scope = scopes.get(name)
                        if scope is not None:
                            self._alerts.metrics.saw_spend(team, scope, win, after)
                            for pct in crossings(scope.limit_nanos, budget.thresholds, after - amount, after):
                                await self._claim_and_fire(budget, scope, pct, after, win)
            if rows:
                await self._write_rows(rows)

    async def _maintain(self) -> None:
        interval = min(self._settings.reconcile_interval_s, self._settings.reservation_ttl_s / 3)
        heartbeat_every = self._settings.reservation_ttl_s / 3
        loop = asyncio.get_running_loop()
        next_heartbeat = loop.time() + heartbeat_every
        while True:
            await asyncio.sleep(interval)
            try:
                if loop.time() >= next_heartbeat:
                    next_heartbeat = loop.time() + heartbeat_every
                    await self._heartbeat()
                await self._reconcile()
            except RedisUnavailable as exc:
                self._log_unavailable(f"budget maintenance skipped: {exc}", len(self._queue))
            except Exception:
                log.exception("budget maintenance failed")

    def _log_unavailable(self, message: str, queued: int) -> None:
        now = asyncio.get_running_loop().time()
        if now - self._last_error_log >= 10.0:
            self._last_error_log = now
            log.error(message, extra={"queued_settlements": queued})

    # -- status and lifecycle ------------------------------------------------------------

    async def snapshot(self, budget: TeamBudget, win: Window) -> dict[str, ScopeState] | None:
        try:
            raw = await self._wire.call("HGETALL", period_key(budget.team, win))
        except RedisUnavailable as exc:
            raise BudgetUnavailable(str(exc)) from None
        values = {raw[i].decode(): raw[i + 1] for i in range(0, len(raw), 2)}
        if values.get("ready") != b"1":
            return None
        return {
            name[2:]: ScopeState(int(values.get(f"s:{name[2:]}", 0)), max(int(values.get(f"r:{name[2:]}", 0)), 0))
            for name in values
            if name.startswith("i:")
        }

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._settler(), name="budget-settler"),
            loop.create_task(self._maintain(), name="budget-reconciler"),
        ]

    async def close(self, timeout_s: float = 5.0) -> None:
        """Send every queued settlement (retrying for up to ``timeout_s``), then stop.

        Waits for the batch being sent too: the settler takes it off the queue before its reply
        comes, and cancelling it then lost the spend of a stop's last requests."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while (self._queue or self._sending) and loop.time() < deadline:
            self._wake.set()
            await asyncio.sleep(0.01)
        if self._queue or self._sending:
            log.error("budget settlements unsent at shutdown; their reservations will be reconciled",
                      extra={"count": len(self._queue) + self._sending})
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        await self._wire.close()


def _now_ms() -> int:
    return int(time.time() * 1000)


def _window_of(label: str) -> Window:
    period, _, day = label.partition(":")
    start = datetime.fromisoformat(day).replace(tzinfo=UTC)
    return window(period, start)  # type: ignore[arg-type]
