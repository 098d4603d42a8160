"""A lean pipelined Redis connection for hot-path scripts (budgets, the response cache).

Why not the shared redis-py client: budget enforcement runs two Redis round trips on every
request (reserve, commit) and the cache one (lookup), and redis-py's asyncio client spends
~150-300 µs of CPU on each (pool checkout, locks, retry wrappers): several times the gateway's
whole per-request budget. This connection does one thing: it writes commands as they come and
matches replies in order (Redis answers a connection's commands in the order it received them),
so any number of requests share one socket with their commands in flight together, at ~15-30 µs
of CPU per command with hiredis parsing. Each user gets its own connection and its own
deadline: a budget check may wait longer than the cache's fail-open lookups
(``budgets.timeout_ms`` vs ``redis.op_timeout_ms``).

Scripts are called with ``EVALSHA``. The first call of a script on a connection sends
``SCRIPT LOAD`` and the ``EVALSHA`` together, in one round trip (Redis runs them in order); a
``NOSCRIPT`` reply (Redis restarted, ``SCRIPT FLUSH``) does the same once more.

Every failure — refused connection, reset, timeout, protocol error — is raised as
:class:`RedisUnavailable`; the caller decides whether that fails open or closed. The module
does not import redis-py (~175 ms of start-up) and reads the same ``redis://``, ``rediss://``
and ``unix://`` URLs.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import ssl
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, cast
from urllib.parse import parse_qs, unquote, urlsplit

import hiredis

Arg = str | bytes | int | float

_CERT_REQS: Final = {"none": ssl.CERT_NONE, "optional": ssl.CERT_OPTIONAL, "required": ssl.CERT_REQUIRED}
_TRUE: Final = frozenset({"1", "true", "yes", "on", "y"})
_FALSE: Final = frozenset({"0", "false", "no", "off", "n"})
#: Longest a write sent with ``later=True`` waits for another command to leave with.
HOLD_S: Final = 0.005


class RedisUnavailable(Exception):
    """Redis could not be reached or did not answer in time.

    ``maybe_applied`` is true when the command had been sent: Redis may have run it and only
    the reply was lost, so a retry must not apply it twice.
    """

    def __init__(self, message: str, *, maybe_applied: bool = False) -> None:
        super().__init__(message)
        self.maybe_applied = maybe_applied


class RedisReplyError(Exception):
    """Redis answered with an error (a bug in a script, a wrong type, OOM): not retried."""


class Script:
    """A Lua script, known to Redis by the sha1 of its source."""

    __slots__ = ("load", "name", "sha", "source")

    def __init__(self, name: str, source: str) -> None:
        self.name = name
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()
        self.load = hiredis.pack_command(("SCRIPT", "LOAD", source))  # type: ignore[arg-type]  # once


# -- addresses --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RedisAddress:
    """Where Redis is and how to log in, as read from a URL."""

    host: str = "localhost"
    port: int = 6379
    path: str | None = None  # a unix socket (then host and port are unused)
    username: str | None = None
    password: str | None = None
    db: int = 0
    tls: ssl.SSLContext | None = None

    def handshake(self) -> list[tuple[Arg, ...]]:
        """The commands a new connection sends before it is used (AUTH, SELECT)."""
        commands: list[tuple[Arg, ...]] = []
        if self.password:
            if self.username:
                commands.append(("AUTH", self.username, self.password))
            else:
                commands.append(("AUTH", self.password))
        if self.db:
            commands.append(("SELECT", self.db))
        return commands


def parse_redis_url(url: str) -> RedisAddress:
    """Read ``redis://[[user]:password@]host[:port][/db]``, ``rediss://...`` and ``unix://path``.

    The same URLs redis-py reads (``redis.url`` is shared with it): ``?db=N`` overrides the
    path's database; credentials are percent-decoded. For ``rediss://`` the certificate is
    verified against the system's CAs unless ``ssl_cert_reqs=none|optional``,
    ``ssl_ca_certs=PATH`` or ``ssl_check_hostname=false`` say otherwise. Query parameters
    meant for redis-py's pool (``socket_timeout``...) are ignored here. Raises ``ValueError``
    for anything else, so a typo fails at start-up rather than on the first request.
    """
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("redis", "rediss", "unix"):
        raise ValueError(f"Redis URL must start with redis://, rediss:// or unix:// (got {url.split(':')[0]!r})")
    query = {name: values[-1] for name, values in parse_qs(parts.query).items() if values}
    db_text = query.get("db")
    if db_text is None and scheme != "unix":
        db_text = unquote(parts.path).strip("/") or None
    try:
        db = int(db_text) if db_text is not None else 0
    except ValueError:
        raise ValueError(f"Redis URL: the database must be a number (got {db_text!r})") from None
    username = unquote(parts.username) if parts.username else None
    password = unquote(parts.password) if parts.password else None
    if scheme == "unix":
        if not parts.path:
            raise ValueError("Redis URL: unix:// needs a socket path")
        return RedisAddress(path=unquote(parts.path), username=username, password=password, db=db)
    try:
        port = parts.port or 6379
    except ValueError:
        raise ValueError("Redis URL: the port must be a number") from None
    tls = _tls_context(query) if scheme == "rediss" else None
    host = unquote(parts.hostname) if parts.hostname else "localhost"
    return RedisAddress(host=host, port=port, username=username, password=password, db=db, tls=tls)


def _tls_context(query: dict[str, str]) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=query.get("ssl_ca_certs"))
    check_hostname = query.get("ssl_check_hostname")
    if check_hostname is not None:
        if check_hostname.lower() not in _TRUE | _FALSE:
            raise ValueError(f"Redis URL: ssl_check_hostname must be true or false (got {check_hostname!r})")
        context.check_hostname = check_hostname.lower() in _TRUE
    cert_reqs = query.get("ssl_cert_reqs")
    if cert_reqs is not None:
        if cert_reqs.lower() not in _CERT_REQS:
            raise ValueError(f"Redis URL: ssl_cert_reqs must be none, optional or required (got {cert_reqs!r})")
        if cert_reqs.lower() == "none":
            context.check_hostname = False  # required before CERT_NONE: no certificate, no name
        context.verify_mode = _CERT_REQS[cert_reqs.lower()]
    return context


# -- the connection ---------------------------------------------------------------------------


class _Protocol(asyncio.Protocol):
    """Commands out in order, replies matched in order.

    A command sent while nothing is in flight leaves at once (the quiet case: no added
    latency); commands sent while others are in flight are gathered and leave together at the
    next loop iteration (the busy case: one syscall for all of them, and their replies are not
    due before the earlier ones anyway). One watchdog per connection replaces a timer per command:
    replies come in order, so if the oldest command waited past the deadline since it was
    written (not since it was queued: a busy loop is not a late Redis), the connection is stuck
    and everything on it fails (and the next command opens a new one).

    A write nobody waits for promptly (``later=True``: a cache store, a budget settlement) is
    held back until the next command leaves, and goes in the same write, or at most
    ``HOLD_S``. On a quiet gateway every write costs a system call and every reply a wake-up
    of the loop (~50 µs of CPU together on the benchmark VM, against ~7 µs a command when
    pipelined); held back, a request's background writes ride with the next request's lookup
    and their replies arrive in the same read.
    """

    def __init__(self, timeout_s: float) -> None:
        self._reader = hiredis.Reader()
        self._waiting: deque[tuple[float, asyncio.Future[Any]]] = deque()
        self._outgoing: list[bytes] = []
        self._held = 0  # waiting commands not written yet (all in _outgoing)
        self._flush_handle: asyncio.Handle | None = None
        self._flush_soon = False  # _flush_handle is a call_soon, not a HOLD_S timer
        self._transport: asyncio.Transport | None = None
        self._loop = asyncio.get_running_loop()
        #: The reply deadline; the handshake runs under the (longer) connect timeout.
        self.timeout = timeout_s
        self._watchdog: asyncio.TimerHandle | None = None
        self.lost = False
        #: Shas of the scripts loaded through this connection (cleared with it: a new
        #: connection may be to a restarted Redis, and loading again costs no round trip).
        self.scripts: set[str] = set()
        #: A subscriber's connection (``RedisWire.subscribe``): pub/sub messages, which no
        #: command asked for, go here instead of failing the connection.
        self.on_message: Callable[[bytes, bytes], None] | None = None
        #: Done when the connection is lost or closed.
        self.closed: asyncio.Future[None] = self._loop.create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    @property
    def usable(self) -> bool:
        return not self.lost and self._transport is not None and not self._transport.is_closing()

    def data_received(self, data: bytes) -> None:
        self._reader.feed(data)
        waiting = self._waiting
        while True:
            try:
                reply = self._reader.gets()
            except hiredis.ProtocolError as exc:
                self._fail(RedisUnavailable(f"Redis protocol error: {exc}", maybe_applied=True))
                return
            if reply is False:
                return
            on_message = self.on_message
            if on_message is not None and type(reply) is list and len(reply) == 3 and reply[0] == b"message":
                on_message(reply[1], reply[2])
                continue
            if not waiting:
                self._fail(RedisUnavailable("Redis sent a reply nobody asked for", maybe_applied=True))
                return
            future = waiting.popleft()[1]
            if not future.done():  # its caller may have been cancelled
                future.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(RedisUnavailable(
            f"Redis connection lost: {exc}" if exc else "Redis closed the connection", maybe_applied=True
        ))

    @property
    def _nothing_written_waits(self) -> bool:
        """No command written to Redis is still waiting for its reply (held ones may wait)."""
        return len(self._waiting) == self._held

    def send(self, packed: bytes, *, later: bool = False) -> asyncio.Future[Any]:
        """Queue one packed command; the future gets its reply (or ``RedisUnavailable``).

        ``later``: nobody waits for the reply soon, so the command may wait up to ``HOLD_S``
        to leave with the next one."""
        if not self.usable:
            raise RedisUnavailable("Redis connection is closed")
        loop = self._loop
        future: asyncio.Future[Any] = loop.create_future()
        now = loop.time()
        waiting = self._waiting
        outgoing = self._outgoing
        if later:
            outgoing.append(packed)
            self._held += 1
            if self._flush_handle is None:
                self._flush_handle = loop.call_later(HOLD_S, self._flush)
        elif self._nothing_written_waits:
            # A quiet moment: send at once rather than an iteration later, with whatever was
            # held back.
            if outgoing:
                outgoing.append(packed)
                self._flush()
            else:
                self._transport.write(packed)  # type: ignore[union-attr]  # usable: it is set
        else:
            outgoing.append(packed)
            self._held += 1
            if not self._flush_soon:
                if self._flush_handle is not None:
                    self._flush_handle.cancel()
                self._flush_handle = loop.call_soon(self._flush)
                self._flush_soon = True
        waiting.append((now, future))
        if self._watchdog is None:
            self._watchdog = loop.call_at(now + self.timeout, self._check)
        return future

    def send_pair(self, first: bytes, second: bytes) -> tuple[asyncio.Future[Any], asyncio.Future[Any]]:
        """Two commands in one write (a script's ``SCRIPT LOAD`` and its ``EVALSHA``)."""
        one = self.send(first + second)
        if self._outgoing:  # queued, not written: its second reply is held back too
            self._held += 1
        two: asyncio.Future[Any] = self._loop.create_future()
        self._waiting.append((self._waiting[-1][0], two))  # the second reply is the next one
        return one, two

    def set_timeout(self, timeout_s: float) -> None:
        """Change the reply deadline (the handshake's is longer than the commands')."""
        self.timeout = timeout_s
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        if self._waiting:
            self._watchdog = self._loop.call_at(self._waiting[0][0] + timeout_s, self._check)

    def _flush(self) -> None:
        if self._flush_handle is not None:
            self._flush_handle.cancel()  # a no-op when it is what runs this
            self._flush_handle = None
        self._flush_soon = False
        held, self._held = self._held, 0
        if held:
            # A command's reply deadline counts from when it leaves, not from when it was queued:
            # a loop stalled in between (a collection, a slow callback) is not Redis being late,
            # and failing the connection for it once answered hard budgets with 503s.
            now = self._loop.time()
            waiting = self._waiting
            for index in range(len(waiting) - held, len(waiting)):
                waiting[index] = (now, waiting[index][1])
        if self._outgoing and self._transport is not None and not self.lost:
            outgoing = self._outgoing
            self._transport.write(outgoing[0] if len(outgoing) == 1 else b"".join(outgoing))
        self._outgoing.clear()

    def _check(self) -> None:
        self._watchdog = None
        if not self._waiting:
            return
        if self._nothing_written_waits:
            # Nothing has left yet (the loop was busy before the flush ran): the deadline of
            # what is queued starts when it is written (see _flush).
            self._watchdog = self._loop.call_at(self._loop.time() + self.timeout, self._check)
            return
        sent = self._waiting[0][0]
        if self._loop.time() - sent >= self.timeout:
            self._fail(RedisUnavailable(
                f"Redis did not answer within {self.timeout * 1000:.0f} ms", maybe_applied=True
            ))
        else:
            self._watchdog = self._loop.call_at(sent + self.timeout, self._check)

    def _fail(self, error: Exception) -> None:
        self.close()
        while self._waiting:
            future = self._waiting.popleft()[1]
            if not future.done():
                future.set_exception(error)

    def close(self) -> None:
        self.lost = True
        if not self.closed.done():
            self.closed.set_result(None)
        self._outgoing.clear()
        self._held = 0
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        if self._transport is not None and not self._transport.is_closing():
            self._transport.abort()


def _result(reply: Any) -> Any:
    if isinstance(reply, hiredis.ReplyError):
        raise RedisReplyError(str(reply))
    return reply


def _copy_outcome(target: asyncio.Future[Any], source: asyncio.Future[Any]) -> None:
    if target.done():
        if not source.cancelled():
            source.exception()  # retrieved: nobody waits for it any more
        return
    if source.cancelled():
        target.cancel()
    elif (error := source.exception()) is not None:
        target.set_exception(error)
    else:
        target.set_result(source.result())


class RedisWire:
    """One multiplexed connection, (re)opened on demand.

    Usage::

        wire = RedisWire("redis://127.0.0.1:6379/0", timeout_s=0.5)
        reply = await wire.evalsha(RESERVE, keys=[...], args=[...])
        await wire.close()

    ``timeout_s`` bounds the wait for each reply; ``connect_timeout_s`` (at least
    ``timeout_s``) bounds opening a connection, handshake included. Callers that find no
    connection share one attempt to open it, so a Redis that does not accept connections costs
    them one connect timeout in all, not one each in turn. With ``connect_wait_s`` a caller
    waits at most that long for the attempt, which goes on without it: a fail-open user keeps
    its deadline, and a slow connect (TLS far away) still completes for the calls that follow.
    """

    def __init__(
        self, url: str, *, timeout_s: float, connect_timeout_s: float = 1.0, connect_wait_s: float | None = None
    ) -> None:
        self.address = parse_redis_url(url)
        self._timeout = timeout_s
        self._connect_timeout = max(connect_timeout_s, timeout_s)
        self._connect_wait = connect_wait_s
        self._protocol: _Protocol | None = None
        self._attempt: asyncio.Task[_Protocol] | None = None

    async def connect(self) -> None:
        """Open the connection unless it is open, waiting as long as the attempt takes."""
        protocol = self._protocol
        if protocol is None or not protocol.usable:
            await self._connect(None)

    async def call(self, *args: Arg) -> Any:
        """One command; raises :class:`RedisUnavailable` or :class:`RedisReplyError`."""
        protocol = self._protocol
        if protocol is None or not protocol.usable:
            protocol = await self._connect(self._connect_wait)
        reply = await protocol.send(hiredis.pack_command(args))  # type: ignore[arg-type]  # stub: 1-tuple
        if isinstance(reply, hiredis.ReplyError):
            raise RedisReplyError(str(reply))
        return reply

    async def evalsha(self, script: Script, keys: list[str], args: list[Arg], *, later: bool = False) -> Any:
        """Run a script: one round trip, whether or not Redis knew the script yet.

        ``later``: the caller can wait; the command may be held back (see ``_Protocol``)."""
        protocol = self._protocol
        if protocol is None or not protocol.usable:
            protocol = await self._connect(self._connect_wait)
        command = hiredis.pack_command(("EVALSHA", script.sha, len(keys), *keys, *args))  # type: ignore[arg-type]
        if script.sha in protocol.scripts:
            reply = await protocol.send(command, later=later)
            if not isinstance(reply, hiredis.ReplyError):
                return reply
            if not str(reply).startswith("NOSCRIPT"):
                raise RedisReplyError(str(reply))
            protocol.scripts.discard(script.sha)  # Redis lost it (restart, SCRIPT FLUSH): load again
            if not protocol.usable:
                protocol = await self._connect(self._connect_wait)
        return await self._load_and_run(protocol, script, command)

    def evalsha_soon(
        self, script: Script, keys: list[str], args: list[Arg], *, later: bool = False
    ) -> asyncio.Future[Any]:
        """:meth:`evalsha` for callers that do not wait for the reply (background writes).

        On the common path (connected, script loaded) the command is queued at once and the
        returned future is resolved by a callback: no task and no coroutine per write. Otherwise
        it is :meth:`evalsha` run as a task. Either way the future gets the reply, or the
        exception :meth:`evalsha` would raise; the caller must retrieve it.
        """
        protocol = self._protocol
        if protocol is None or not protocol.usable or script.sha not in protocol.scripts:
            return asyncio.ensure_future(self.evalsha(script, keys, args))
        command = hiredis.pack_command(("EVALSHA", script.sha, len(keys), *keys, *args))  # type: ignore[arg-type]
        reply = protocol.send(command, later=later)
        result: asyncio.Future[Any] = reply.get_loop().create_future()
        reply.add_done_callback(functools.partial(self._resolve_soon, result, protocol, script, keys, args))
        return result

    def _resolve_soon(
        self,
        result: asyncio.Future[Any],
        protocol: _Protocol,
        script: Script,
        keys: list[str],
        args: list[Arg],
        reply: asyncio.Future[Any],
    ) -> None:
        if result.done():  # the caller cancelled it
            if not reply.cancelled():
                reply.exception()  # retrieved: nobody waits for it any more
            return
        if reply.cancelled():
            result.cancel()
            return
        error = reply.exception()
        if error is not None:
            result.set_exception(error)
            return
        value = reply.result()
        if not isinstance(value, hiredis.ReplyError):
            result.set_result(value)
        elif str(value).startswith("NOSCRIPT"):
            protocol.scripts.discard(script.sha)  # Redis lost it: the slow path loads it again
            retry = asyncio.ensure_future(self.evalsha(script, keys, args))
            retry.add_done_callback(functools.partial(_copy_outcome, result))
        else:
            result.set_exception(RedisReplyError(str(value)))

    async def _load_and_run(self, protocol: _Protocol, script: Script, command: bytes) -> Any:
        load, run = protocol.send_pair(script.load, command)
        try:
            loaded = await load
        except BaseException:
            # Both failed together (the connection did), or the caller was cancelled.
            if not run.done():
                run.cancel()
            elif not run.cancelled():
                run.exception()  # retrieved: the caller gets the first error
            raise
        if isinstance(loaded, hiredis.ReplyError) or loaded != script.sha.encode():
            run.cancel()  # its reply (NOSCRIPT) still comes, and is dropped
            raise RedisReplyError(f"SCRIPT LOAD of {script.name} failed: {loaded!r}")
        protocol.scripts.add(script.sha)
        return _result(await run)

    async def _connect(self, wait_s: float | None) -> _Protocol:
        attempt = self._attempt
        if attempt is None:
            attempt = self._attempt = asyncio.get_running_loop().create_task(self._open())
            attempt.add_done_callback(self._opened)
        try:
            # shield: a caller that goes away must not cancel the attempt the others wait for.
            if wait_s is None:
                return await asyncio.shield(attempt)
            try:
                async with asyncio.timeout(wait_s):
                    return await asyncio.shield(attempt)
            except TimeoutError:
                raise RedisUnavailable(f"no Redis connection within {wait_s * 1000:.0f} ms (still trying)") from None
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if attempt.cancelled() and task is not None and not task.cancelling():
                # close() stopped the attempt: a failure for this caller, not its cancellation.
                raise RedisUnavailable("the Redis connection was closed while opening") from None
            raise

    def _opened(self, attempt: asyncio.Task[_Protocol]) -> None:
        failed = attempt.cancelled() or attempt.exception() is not None  # also marks it retrieved
        if self._attempt is not attempt:  # the wire was closed meanwhile
            if not failed:
                attempt.result().close()
            return
        self._attempt = None
        if not failed:
            self._protocol = attempt.result()

    async def _open(self) -> _Protocol:
        loop = asyncio.get_running_loop()
        address = self.address
        factory = functools.partial(_Protocol, self._connect_timeout)
        protocol: _Protocol | None = None
        try:
            async with asyncio.timeout(self._connect_timeout):
                if address.path is not None:
                    _, protocol = await loop.create_unix_connection(factory, address.path)
                else:
                    _, protocol = await loop.create_connection(factory, address.host, address.port, ssl=address.tls)
                for command in address.handshake():
                    reply = await protocol.send(hiredis.pack_command(command))  # type: ignore[arg-type]
                    if isinstance(reply, hiredis.ReplyError):
                        raise RedisUnavailable(f"Redis refused {command[0]!r}: {reply}")
        except (OSError, TimeoutError, RedisUnavailable) as exc:
            if protocol is not None:
                protocol.close()
            if isinstance(exc, RedisUnavailable):
                raise RedisUnavailable(str(exc)) from None  # nothing of the caller's was sent
            raise RedisUnavailable(f"cannot connect to Redis: {exc or type(exc).__name__}") from None
        except BaseException:
            if protocol is not None:
                protocol.close()
            raise
        protocol.set_timeout(self._timeout)  # logged in: from now on, the reply deadline
        return protocol

    async def subscribe(self, channel: bytes, on_message: Callable[[bytes, bytes], None]) -> Subscription:
        """A connection of its own, subscribed to ``channel``: ``on_message(channel, data)`` is
        called for each message published there, from the event loop, until it is closed or
        lost (``Subscription.closed``). Raises :class:`RedisUnavailable`.

        Why not redis-py's pub/sub, as before: it was the only part of the serving process that
        needed redis-py, whose import costs ~150 ms of start-up and ~9 MiB of memory.
        """
        protocol = await self._open()
        protocol.on_message = on_message
        try:
            reply = await protocol.send(hiredis.pack_command((b"SUBSCRIBE", channel)))  # type: ignore[arg-type]  # stub: 1-tuple
        except BaseException:
            protocol.close()
            raise
        if isinstance(reply, hiredis.ReplyError) or not (type(reply) is list and reply and reply[0] == b"subscribe"):
            protocol.close()
            raise RedisUnavailable(f"Redis refused SUBSCRIBE: {reply!r}")
        return Subscription(protocol)

    async def close(self) -> None:
        """Drop the connection (commands in flight fail); a later call opens a new one."""
        attempt, self._attempt = self._attempt, None
        if attempt is not None:
            attempt.cancel()
        if self._protocol is not None:
            self._protocol.close()
            self._protocol = None


class Subscription:
    """A subscribed connection (``RedisWire.subscribe``)."""

    def __init__(self, protocol: _Protocol) -> None:
        self._protocol = protocol

    @property
    def closed(self) -> asyncio.Future[None]:
        """Done when the connection is lost (or ``close`` was called)."""
        return self._protocol.closed

    async def ping(self) -> None:
        """A round trip, under the wire's reply deadline: a stuck connection fails and closes.
        (Redis answers PING on a subscribed connection with a ``pong`` array, in order.)"""
        _result(await self._protocol.send(hiredis.pack_command((b"PING",))))

    def close(self) -> None:
        self._protocol.close()
