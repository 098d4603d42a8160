"""A small pipelined Redis connection for the budget scripts.

Why not the shared redis-py client: budget enforcement runs two Redis round trips on every
request (reserve, commit), and redis-py's asyncio client spends ~80-150 µs of CPU on each
(pool checkout, locks, retry wrappers), several times the gateway's whole per-request budget.
This connection does one thing: it writes commands as they come and matches replies in order
(Redis answers a connection's commands in the order it received them), so any number of
requests share one socket with their commands in flight together, at ~15-30 µs of CPU per
command with hiredis parsing. It also gets its own deadline: a budget check may wait longer
than the cache's fail-open lookups (``budgets.timeout_ms`` vs ``redis.op_timeout_ms``).

Scripts are loaded once per connection (``SCRIPT LOAD``) and called with ``EVALSHA``; a
``NOSCRIPT`` reply (Redis restarted, ``SCRIPT FLUSH``) reloads and retries once.

Every failure — refused connection, reset, timeout, protocol error — is raised as
:class:`RedisUnavailable`; the caller decides whether that fails open or closed.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import ssl
from collections import deque
from typing import Any, cast

import hiredis
from redis.connection import SSLConnection, parse_url

Arg = str | bytes | int | float


class RedisUnavailable(Exception):
    """Redis could not be reached or did not answer in time.

    ``maybe_applied`` is true when the command had been sent: Redis may have run it and only
    the reply was lost, so a retry must not apply it twice.
    """

    def __init__(self, message: str, *, maybe_applied: bool = False) -> None:
        super().__init__(message)
        self.maybe_applied = maybe_applied


class RedisReplyError(Exception):
    """Redis answered with an error (a bug in a script, a wrong type): not retried."""


class Script:
    """A Lua script, known to Redis by the sha1 of its source."""

    __slots__ = ("name", "sha", "source")

    def __init__(self, name: str, source: str) -> None:
        self.name = name
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()


class _Protocol(asyncio.Protocol):
    """Commands out in order, replies matched in order.

    Commands written during one event-loop iteration leave in one ``write`` (one syscall for
    all the requests in flight), and one watchdog per connection replaces a timer per command:
    replies come in order, so if the oldest command waited past the deadline, the connection is
    stuck and everything on it fails (and the next command opens a new one).
    """

    def __init__(self, timeout_s: float) -> None:
        self._reader = hiredis.Reader()
        self._waiting: deque[tuple[float, asyncio.Future[Any]]] = deque()
        self._outgoing: list[bytes] = []
        self._transport: asyncio.Transport | None = None
        self._loop = asyncio.get_running_loop()
        self._timeout = timeout_s
        self._watchdog: asyncio.TimerHandle | None = None
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        self._reader.feed(data)
        while True:
            try:
                reply = self._reader.gets()
            except hiredis.ProtocolError as exc:
                self._fail(RedisUnavailable(f"Redis protocol error: {exc}", maybe_applied=True))
                return
            if reply is False:
                return
            _, future = self._waiting.popleft()
            if not future.done():  # its caller may have been cancelled
                future.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(RedisUnavailable(
            f"Redis connection lost: {exc}" if exc else "Redis closed the connection", maybe_applied=True
        ))

    def send(self, packed: bytes) -> asyncio.Future[Any]:
        if self.lost or self._transport is None or self._transport.is_closing():
            raise RedisUnavailable("Redis connection is closed")
        future: asyncio.Future[Any] = self._loop.create_future()
        now = self._loop.time()
        self._waiting.append((now, future))
        if not self._outgoing:
            self._loop.call_soon(self._flush)
        self._outgoing.append(packed)
        if self._watchdog is None:
            self._watchdog = self._loop.call_at(now + self._timeout, self._check)
        return future

    def _flush(self) -> None:
        if self._outgoing and self._transport is not None and not self.lost:
            self._transport.write(b"".join(self._outgoing))
        self._outgoing.clear()

    def _check(self) -> None:
        self._watchdog = None
        if not self._waiting:
            return
        sent = self._waiting[0][0]
        if self._loop.time() - sent >= self._timeout:
            self._fail(RedisUnavailable(
                f"Redis did not answer within {self._timeout * 1000:.0f} ms", maybe_applied=True
            ))
        else:
            self._watchdog = self._loop.call_at(sent + self._timeout, self._check)

    def _fail(self, error: Exception) -> None:
        self.close()
        while self._waiting:
            _, future = self._waiting.popleft()
            if not future.done():
                future.set_exception(error)

    def close(self) -> None:
        self.lost = True
        self._outgoing.clear()
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        if self._transport is not None and not self._transport.is_closing():
            self._transport.abort()


class RedisWire:
    """One multiplexed connection, (re)opened on demand.

    Usage::

        wire = RedisWire("redis://127.0.0.1:6379/0", timeout_s=0.5)
        reply = await wire.evalsha(RESERVE, keys=[...], args=[...])
        await wire.close()
    """

    def __init__(self, url: str, *, timeout_s: float, connect_timeout_s: float = 1.0) -> None:
        self._params: dict[str, Any] = parse_url(url)  # type: ignore[no-untyped-call]
        self._timeout = timeout_s
        self._connect_timeout = max(connect_timeout_s, timeout_s)
        self._protocol: _Protocol | None = None
        self._connecting: asyncio.Lock | None = None
        self._loaded: set[str] = set()  # script shas known to be loaded

    async def call(self, *args: Arg) -> Any:
        """One command; raises :class:`RedisUnavailable` or :class:`RedisReplyError`."""
        protocol = self._protocol
        if protocol is None or protocol.lost:
            protocol = await self._connect()
        try:
            future = protocol.send(hiredis.pack_command(args))  # type: ignore[arg-type]  # stub: 1-tuple
        except RedisUnavailable:
            self._protocol = None
            raise
        reply = await future
        if isinstance(reply, hiredis.ReplyError):
            raise RedisReplyError(str(reply))
        return reply

    async def evalsha(self, script: Script, keys: list[str], args: list[Arg]) -> Any:
        sha = script.sha
        if sha not in self._loaded:
            await self._load(script)
        try:
            return await self.call("EVALSHA", sha, len(keys), *keys, *args)
        except RedisReplyError as exc:
            if not str(exc).startswith("NOSCRIPT"):
                raise
        self._loaded.discard(sha)
        await self._load(script)
        return await self.call("EVALSHA", sha, len(keys), *keys, *args)

    async def _load(self, script: Script) -> None:
        sha = await self.call("SCRIPT", "LOAD", script.source)
        if isinstance(sha, bytes) and sha.decode() != script.sha:
            raise RedisReplyError(f"SCRIPT LOAD of {script.name} returned an unexpected sha")
        self._loaded.add(script.sha)

    async def _connect(self) -> _Protocol:
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:
            if self._protocol is not None and not self._protocol.lost:
                return self._protocol  # another caller connected while this one waited
            self._loaded.clear()
            protocol = await self._open()
            self._protocol = protocol
            return protocol

    async def _open(self) -> _Protocol:
        loop = asyncio.get_running_loop()
        params = self._params
        try:
            async with asyncio.timeout(self._connect_timeout):
                factory = functools.partial(_Protocol, self._timeout)
                if params.get("path"):
                    _, protocol = await loop.create_unix_connection(factory, params["path"])
                else:
                    tls = ssl.create_default_context() if params.get("connection_class") is SSLConnection else None
                    _, protocol = await loop.create_connection(
                        factory, params.get("host", "localhost"), params.get("port", 6379), ssl=tls
                    )
                for command in self._handshake():
                    reply = await protocol.send(hiredis.pack_command(command))  # type: ignore[arg-type]
                    if isinstance(reply, hiredis.ReplyError):
                        protocol.close()
                        raise RedisUnavailable(f"Redis refused {command[0]!r}: {reply}")
        except (OSError, TimeoutError) as exc:
            raise RedisUnavailable(f"cannot connect to Redis: {exc or type(exc).__name__}") from None
        return protocol

    def _handshake(self) -> list[tuple[Arg, ...]]:
        params = self._params
        commands: list[tuple[Arg, ...]] = []
        if params.get("password"):
            if params.get("username"):
                commands.append(("AUTH", params["username"], params["password"]))
            else:
                commands.append(("AUTH", params["password"]))
        if params.get("db"):
            commands.append(("SELECT", int(params["db"])))
        return commands

    async def close(self) -> None:
        if self._protocol is not None:
            self._protocol.close()
            self._protocol = None
