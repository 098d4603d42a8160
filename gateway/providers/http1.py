"""The upstream HTTP/1.1 client of the fast path: pooled keep-alive connections, llhttp to parse.

The OpenAI-compatible provider sends every chat completion and embedding through here. It
does what that path needs and nothing else: a POST with a body that is already bytes, an
answer read whole (JSON) or piece by piece (a stream), keep-alive connections per origin,
TLS, a connect timeout, a total timeout (JSON) or a timeout per read (streams).

Why not aiohttp, which the gateway uses everywhere off the request path: a request through
aiohttp's ``ClientSession`` cost ~75-95 µs of CPU on the benchmark VM, through this client
~22-30 µs (the same fake upstream, 32 at a time, 4,000 requests, 5 runs each; the numbers are
in ``benchmarks/README.md``). The difference is aiohttp's generality per request (a request
and a response object, header multidicts, cookies, payload objects, timer contexts), paid
on every call a gateway makes. Parsing stays in a well-kept library: ``httptools`` (Node's
llhttp), the parser uvicorn already uses for the gateway's own requests.

What it leaves out, on purpose: proxies from the environment (the aiohttp session did not
read them either), redirects (an API answers, it does not redirect), cookies (a shared client
must never carry one team's upstream cookie into another team's request), and HTTP/2.

Connections: a connection goes back to its origin's idle list when its answer ended and both
sides allow keep-alive; idle ones older than ``idle_s`` or closed by the server meanwhile are
dropped when found. A request on a reused connection that the server closed before a byte of
its answer arrived (the keep-alive race: the server timed the connection out as it was taken)
is sent once more on a new connection. The errors raised are this module's, translated into
the gateway's in one place (``openai_compat._translate``).
"""

from __future__ import annotations

import asyncio
import collections
import ssl
import time
import zlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from urllib.parse import urlsplit

import httptools

from gateway import spare_time

__all__ = [
    "AnswerTooLarge",
    "ConnectFailed",
    "Disconnected",
    "Http1Client",
    "JsonAnswer",
    "ProtocolFailed",
    "StreamAnswer",
    "Target",
]

#: A stream's unread pieces past this many bytes pause reading from the upstream until the
#: caller catches up (a slow client must not make the gateway buffer a whole answer).
HIGH_WATER = 256 * 1024
#: An answer's head (status line and headers) longer than this is refused: an upstream that sends
#: headers without end must not grow the gateway's memory until the timeout (aiohttp's limit was
#: 8 KiB a line).
MAX_HEAD_BYTES = 64 * 1024


class AnswerTooLarge(Exception):
    """The answer's body (decompressed; a stream's in all) passed the caller's ``max_body_bytes``."""


class ConnectFailed(Exception):
    """No connection to the upstream (refused, unreachable, TLS handshake failed)."""


class Disconnected(Exception):
    """The upstream closed or reset the connection before its answer was complete."""


class ProtocolFailed(Exception):
    """The upstream's answer is not HTTP/1.1 this client can read."""


@dataclass(frozen=True, slots=True)
class Target:
    """A URL to POST to, parsed once: its origin and the request's fixed head."""

    origin: tuple[str, str, int]  # scheme, host, port
    head: bytes  # request line and fixed headers, without Content-Length and the blank line

    @classmethod
    def of(cls, url: str, headers: dict[str, str]) -> Target:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {url!r}")
        port = parts.port or (443 if parts.scheme == "https" else 80)
        default_port = (parts.scheme == "https" and port == 443) or (parts.scheme == "http" and port == 80)
        host = parts.hostname
        host_header = f"[{host}]" if ":" in host else host
        if not default_port:
            host_header += f":{port}"
        path = parts.path or "/"
        if parts.query:
            path += "?" + parts.query
        lines = [f"POST {path} HTTP/1.1", f"Host: {host_header}"]
        for name, value in headers.items():
            if "\r" in name or "\n" in name or "\r" in value or "\n" in value:
                raise ValueError(f"header {name!r} holds a line break")
            lines.append(f"{name}: {value}")
        return cls((parts.scheme, host, port), ("\r\n".join(lines) + "\r\n").encode("latin-1"))


@dataclass(slots=True)
class JsonAnswer:
    status: int
    headers: dict[bytes, bytes]  # names lower-cased; a repeated header keeps its last value
    body: bytes


class _Connection(asyncio.Protocol):
    """One keep-alive connection; one exchange at a time. Parser callbacks fill the answer."""

    def __init__(self, client: Http1Client, origin: tuple[str, str, int]) -> None:
        self._client = client
        self.origin = origin
        self.transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self.closed = False
        self.idle_since = 0.0
        self.reused = False
        self.busy = False  # an exchange is in progress (from ``start`` until released)
        # The exchange in progress.
        self.status = 0
        self.headers: dict[bytes, bytes] = {}
        self.headers_done = False
        self.complete = False
        self.keep_alive = False
        self.received = False  # a byte of the answer arrived
        self._body: list[bytes] = []
        self._buffered = 0
        self._body_bytes = 0  # all of this answer's body so far, decompressed
        self._max_body: int | None = None
        self._head_bytes = 0
        self._paused = False
        self._head_waiter: asyncio.Future[None] | None = None
        self._body_waiter: asyncio.Future[None] | None = None
        self._streaming = False
        self._failure: BaseException | None = None
        self._decoder: zlib._Decompress | None = None
        self.last_read = 0.0

    # -- asyncio.Protocol ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # a stream transport

    def data_received(self, data: bytes) -> None:
        if not self.busy or self.complete:
            # Bytes on an idle connection, or after the answer: nothing can be trusted on it any more.
            self.abort()
            return
        self.received = True
        self.last_read = time.monotonic()
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(ProtocolFailed("the upstream switched protocols"))
        except httptools.HttpParserError as exc:
            self._fail(ProtocolFailed(f"the upstream's answer is not valid HTTP/1.1 ({exc})"))
            return
        if not self.headers_done:  # counted only while the head is still coming
            self._head_bytes += len(data)
            if self._head_bytes > MAX_HEAD_BYTES:
                self._fail(ProtocolFailed(f"the upstream's answer head exceeds {MAX_HEAD_BYTES // 1024} KiB"))

    def eof_received(self) -> bool | None:
        self._ended()
        return False  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._ended()
        self._client._forget(self)

    # -- httptools callbacks -------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self.complete:  # a second answer to one request: the connection cannot be trusted
            self.keep_alive = False

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self.complete:
            self.headers[name.lower()] = value

    def on_headers_complete(self) -> None:
        if self.complete:
            return
        self.status = self._parser.get_status_code()
        if 100 <= self.status < 200:  # an informational answer: the real one follows
            self.headers = {}
            return
        self.headers_done = True
        declared = self.headers.get(b"content-length", b"")
        if self._max_body is not None and declared.isdigit() and int(declared) > self._max_body:
            self._fail(AnswerTooLarge(f"the upstream announced {int(declared)} bytes"))
            return
        encoding = self.headers.get(b"content-encoding", b"identity").strip().lower()
        if encoding in (b"gzip", b"x-gzip", b"deflate"):
            self._decoder = zlib.decompressobj(47)  # 32 + 15: a gzip or zlib header, found out
        elif encoding != b"identity":
            self._fail(ProtocolFailed(f"unsupported content-encoding {encoding.decode('latin-1')!r}"))
            return
        _wake(self._head_waiter)
        self._head_waiter = None

    def on_body(self, body: bytes) -> None:
        if self._failure is not None or self.complete:
            return
        if self._decoder is not None:
            try:
                body = self._decoder.decompress(body)
            except zlib.error:
                self._fail(ProtocolFailed("the upstream's compressed answer does not decompress"))
                return
            if not body:
                return
        self._body_bytes += len(body)
        if self._max_body is not None and self._body_bytes > self._max_body:
            # Counted after decompression: a small compressed answer cannot unfold past it either.
            self._fail(AnswerTooLarge(f"the upstream's answer passed {self._max_body} bytes"))
            return
        self._body.append(body)
        if self._streaming:
            self._buffered += len(body)
            if self._buffered > HIGH_WATER and not self._paused and self.transport is not None:
                self._paused = True
                self.transport.pause_reading()
            _wake(self._body_waiter)
            self._body_waiter = None

    def on_message_complete(self) -> None:
        if (100 <= self.status < 200 and not self.headers_done) or self.complete or self._failure is not None:
            return  # (a failed answer's end, parsed from the same read, does not make it whole)
        if self._decoder is not None:
            tail = self._decoder.flush()
            self._decoder = None
            if tail:
                self._body.append(tail)
        self.complete = True
        # Asked here: once the callback returns, llhttp starts over and forgets the answer's flags.
        self.keep_alive = self._parser.should_keep_alive()
        _wake(self._head_waiter)
        _wake(self._body_waiter)
        self._head_waiter = self._body_waiter = None

    # -- the exchange --------------------------------------------------------------------

    @property
    def _in_exchange(self) -> bool:
        return self.headers_done and not self.complete

    def start(self, request: bytes, *, streaming: bool, max_body: int | None = None) -> asyncio.Future[None]:
        """Write one request; the future resolves once the answer's head (streaming) or the
        whole answer arrived (``max_body``: fail with ``AnswerTooLarge`` past that many bytes)."""
        self.status, self.headers, self.headers_done, self.complete, self.received = 0, {}, False, False, False
        self.keep_alive = False
        self._body, self._buffered, self._streaming, self._failure = [], 0, streaming, None
        self._body_bytes, self._max_body = 0, max_body
        self._head_bytes = 0
        self.busy = True
        self.last_read = time.monotonic()
        transport = self.transport
        if transport is None or self.closed or transport.is_closing():
            raise Disconnected("the connection closed before the request was sent")
        try:
            transport.write(request)
        except (OSError, RuntimeError):  # uvloop: a transport closed under us
            self.closed = True
            raise Disconnected("the connection closed before the request was sent") from None
        # Set once the request is written: a waiter nobody awaits (a failed write) would be
        # failed by the connection's end and reported as an exception never retrieved. No
        # answer can arrive before this returns (callbacks run on later turns of the loop).
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if streaming:
            self._head_waiter = waiter
        else:
            self._body_waiter = waiter
        return waiter

    def body(self) -> bytes:
        body = self._body
        return body[0] if len(body) == 1 else b"".join(body)

    async def piece(self) -> bytes | None:
        """The next piece of a streamed answer (all that arrived since the last call), or None
        at its end."""
        while True:
            if self._body:
                pieces, self._body, self._buffered = self._body, [], 0
                if self._paused and self.transport is not None and not self.closed:
                    self._paused = False
                    self.transport.resume_reading()
                return pieces[0] if len(pieces) == 1 else b"".join(pieces)
            if self.complete:
                return None
            if self._failure is not None:
                raise self._failure
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._body_waiter = waiter
            try:
                await waiter
            finally:
                self._body_waiter = None

    def fail_timeout(self) -> None:
        self._fail(TimeoutError())

    def _ended(self) -> None:
        if (self.headers_done and not self.complete and not self._failure
                and b"content-length" not in self.headers
                and b"chunked" not in self.headers.get(b"transfer-encoding", b"").lower()):
            self.on_message_complete()  # an answer delimited by the connection's end
        elif not self.complete and (self._head_waiter is not None or self._body_waiter is not None
                                    or self._in_exchange):
            self._fail(Disconnected("the upstream closed the connection before its answer was complete"))
        self.closed = True

    def _fail(self, error: BaseException) -> None:
        if self._failure is None:
            self._failure = error
        waiter = self._head_waiter or self._body_waiter
        self._head_waiter = self._body_waiter = None
        if waiter is not None and not waiter.done():
            waiter.set_exception(error)
        self.abort()

    def abort(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    @property
    def unread(self) -> bool:
        return bool(self._body)

    def reusable(self) -> bool:
        return self.complete and self.keep_alive and not self.closed


def _wake(waiter: asyncio.Future[None] | None) -> None:
    if waiter is not None and not waiter.done():
        waiter.set_result(None)


class StreamAnswer:
    """A streamed answer: its status and headers, then ``pieces()`` until the end; ``close()``
    always (it returns the connection to the pool or drops it)."""

    def __init__(self, client: Http1Client, connection: _Connection, read_timeout_s: float | None) -> None:
        self._client = client
        self._connection = connection
        self._read_timeout_s = read_timeout_s
        self.status = connection.status
        self.headers = connection.headers
        self._timer: asyncio.TimerHandle | None = None
        self._closed = False

    @property
    def content_type(self) -> str:
        return self.headers.get(b"content-type", b"").split(b";", 1)[0].strip().decode("latin-1").lower()

    async def read(self) -> bytes:
        """The whole rest of the answer (an error answer's body)."""
        return b"".join([piece async for piece in self.pieces()])

    async def pieces(self) -> AsyncIterator[bytes]:
        connection = self._connection
        timeout = self._read_timeout_s
        if timeout is not None and self._timer is None:
            self._arm(timeout)
        while True:
            piece = await connection.piece()
            if piece is None:
                return
            yield piece

    def _arm(self, timeout: float) -> None:
        # One timer per read timeout, not one per piece: when it fires it checks when the last
        # byte came, and sets itself again from there.
        loop = asyncio.get_running_loop()
        self._timer = loop.call_at(loop.time() + timeout, self._check_reads, timeout)

    def _check_reads(self, timeout: float) -> None:
        self._timer = None
        connection = self._connection
        if self._closed or connection.complete or connection.closed:
            return
        # Unread pieces (reading paused, or not) mean the caller is the slow one, not the upstream.
        quiet = 0.0 if connection.unread else time.monotonic() - connection.last_read
        if quiet >= timeout:
            connection.fail_timeout()
            return
        loop = asyncio.get_running_loop()
        self._timer = loop.call_at(loop.time() + timeout - quiet, self._check_reads, timeout)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        # A stream cut short is dropped with its connection: that is what stops the upstream
        # generating an answer nobody reads.
        self._client._release(self._connection)


class Http1Client:
    """Keep-alive connections per origin, shared by every request of the process."""

    def __init__(self, *, max_idle: int = 1000, idle_s: float = 30.0) -> None:
        self._max_idle = max_idle
        self._idle_s = idle_s
        self._idle: dict[tuple[str, str, int], collections.deque[_Connection]] = {}
        self._idle_count = 0
        self._ssl: ssl.SSLContext | None = None
        self._open: set[_Connection] = set()
        self._loop: asyncio.AbstractEventLoop | None = None  # the loop the pooled connections belong to

    @property
    def idle(self) -> int:
        return self._idle_count

    async def post(
        self, target: Target, body: bytes, *, timeout_s: float | None, connect_timeout_s: float | None,
        max_body_bytes: int | None = None,
    ) -> JsonAnswer:
        """POST ``body`` and read the whole answer within ``timeout_s`` (connecting included),
        and within ``max_body_bytes`` (else ``AnswerTooLarge``)."""
        deadline = asyncio.get_running_loop().time() + timeout_s if timeout_s is not None else None
        connection = await self._exchange(target, body, False, connect_timeout_s, deadline, deadline, max_body_bytes)
        answer = JsonAnswer(connection.status, connection.headers, connection.body())
        self._release(connection)
        return answer

    async def post_stream(
        self, target: Target, body: bytes, *, read_timeout_s: float | None, connect_timeout_s: float | None,
        max_body_bytes: int | None = None,
    ) -> StreamAnswer:
        """POST ``body`` and return once the answer's head arrived (each wait bounded by
        ``read_timeout_s``); the caller reads its pieces and closes it. A read past
        ``max_body_bytes`` of the whole stream raises ``AnswerTooLarge``."""
        loop = asyncio.get_running_loop()
        head_by = loop.time() + read_timeout_s if read_timeout_s is not None else None
        connection = await self._exchange(target, body, True, connect_timeout_s, None, head_by, max_body_bytes)
        return StreamAnswer(self, connection, read_timeout_s)

    async def _exchange(
        self, target: Target, body: bytes, streaming: bool, connect_timeout_s: float | None,
        deadline: float | None, wait_until: float | None, max_body: int | None,
    ) -> _Connection:
        """Send the request; return its connection once the answer (or a stream's head) is in.
        ``deadline`` bounds connecting too, ``wait_until`` the wait for the answer."""
        loop = asyncio.get_running_loop()
        request = target.head + b"Content-Length: %d\r\n\r\n" % len(body) + body
        for attempt in (0, 1):
            connection = await self._connection(target.origin, connect_timeout_s, deadline)
            timer = loop.call_at(wait_until, connection.fail_timeout) if wait_until is not None else None
            try:
                answered = connection.start(request, streaming=streaming, max_body=max_body)
                # The upstream works on the request now: the loop's spare time (see spare_time).
                spare_time.run()
                await answered
            except Disconnected:
                connection.abort()
                if attempt == 0 and connection.reused and not connection.received:
                    continue  # the keep-alive race: once more, on a new connection
                raise
            except BaseException:
                connection.abort()  # cancelled or failed mid-exchange: the connection is spent
                raise
            finally:
                if timer is not None:
                    timer.cancel()
            return connection
        raise AssertionError("unreachable")

    async def _connection(
        self, origin: tuple[str, str, int], connect_timeout_s: float | None, deadline: float | None
    ) -> _Connection:
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            # A connection belongs to the loop that opened it (a test, or a tool that runs one
            # loop after another): start the pool afresh in this one.
            self._idle.clear()
            self._idle_count = 0
            self._open.clear()
            self._loop = loop
        idle = self._idle.get(origin)
        if idle:
            now = time.monotonic()
            while idle:
                connection = idle.pop()  # the most recently used: the likeliest to be alive
                self._idle_count -= 1
                if connection.closed or now - connection.idle_since > self._idle_s:
                    connection.abort()
                    continue
                connection.reused = True
                return connection
        return await self._connect(origin, connect_timeout_s, deadline)

    async def _connect(
        self, origin: tuple[str, str, int], connect_timeout_s: float | None, deadline: float | None
    ) -> _Connection:
        loop = asyncio.get_running_loop()
        scheme, host, port = origin
        limit = connect_timeout_s
        if deadline is not None:
            left = deadline - loop.time()
            limit = left if limit is None else min(limit, left)
        tls = self._tls() if scheme == "https" else None
        try:
            async with asyncio.timeout(limit):
                _, connection = await loop.create_connection(
                    lambda: _Connection(self, origin), host, port, ssl=tls, server_hostname=host if tls else None
                )
        except TimeoutError:
            raise
        except (OSError, ssl.SSLError) as exc:
            raise ConnectFailed(f"cannot connect to {host}:{port} ({type(exc).__name__})") from None
        self._open.add(connection)
        return connection

    def _tls(self) -> ssl.SSLContext:
        if self._ssl is None:
            # The system's certificate authorities (and SSL_CERT_FILE / SSL_CERT_DIR, which
            # OpenSSL reads), hostnames checked: what aiohttp's default was.
            self._ssl = ssl.create_default_context()
        return self._ssl

    def _release(self, connection: _Connection) -> None:
        connection.busy = False
        if connection.reusable() and self._idle_count < self._max_idle:
            connection.idle_since = time.monotonic()
            connection.reused = False
            self._idle.setdefault(connection.origin, collections.deque()).append(connection)
            self._idle_count += 1
            return
        connection.abort()
        self._open.discard(connection)

    def _forget(self, connection: _Connection) -> None:
        self._open.discard(connection)

    async def close(self) -> None:
        for idle in self._idle.values():
            for connection in idle:
                connection.abort()
        self._idle.clear()
        self._idle_count = 0
        for connection in list(self._open):
            connection.abort()
        self._open.clear()
        await asyncio.sleep(0)  # let the transports' close callbacks run
