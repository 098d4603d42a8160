"""The upstream HTTP/1.1 client (``gateway.providers.http1``) against scripted local servers.

Each test runs a small asyncio server whose handler plays one upstream behaviour (keep-alive,
chunked and compressed answers, a connection closed at the wrong moment, a hang, TLS) and
asserts what the client returns or raises, and whether the connection was kept.
"""

from __future__ import annotations

import asyncio
import datetime
import gzip
import ipaddress
import ssl
import zlib
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeAlias

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from gateway.providers import http1

Reader: TypeAlias = asyncio.StreamReader
Writer: TypeAlias = asyncio.StreamWriter
Handler = Callable[[Reader, Writer, "Upstream"], Awaitable[None]]


class Upstream:
    """A local server running ``handler`` per connection; counts connections and requests."""

    def __init__(self, handler: Handler, tls: ssl.SSLContext | None = None) -> None:
        self.handler = handler
        self.tls = tls
        self.connections = 0
        self.requests: list[bytes] = []
        self.disconnected = asyncio.Event()
        self.server: asyncio.Server | None = None
        self.port = 0

    async def __aenter__(self) -> Upstream:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.tls)
        self.port = int(self.server.sockets[0].getsockname()[1])
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self.server is not None
        self.server.close()

    def url(self, path: str = "/v1/chat/completions", scheme: str = "http", host: str = "127.0.0.1") -> str:
        return f"{scheme}://{host}:{self.port}{path}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            await self.handler(reader, writer, self)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self.disconnected.set()
            writer.close()

    async def read_request(self, reader: asyncio.StreamReader) -> bytes | None:
        """One request (head and body), or None when the client closed the connection."""
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            return None
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
        request = head + await reader.readexactly(length)
        self.requests.append(request)
        return request


def answer(body: bytes, *headers: bytes, status: bytes = b"200 OK") -> bytes:
    lines = [b"HTTP/1.1 " + status, b"Content-Type: application/json", b"Content-Length: %d" % len(body), *headers]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


async def keep_alive(reader: Reader, writer: Writer, upstream: Upstream) -> None:
    while await upstream.read_request(reader) is not None:
        writer.write(answer(b'{"n": %d}' % len(upstream.requests), b"Set-Cookie: session=team-a"))
        await writer.drain()


def target(upstream: Upstream, **kwargs: str) -> http1.Target:
    return http1.Target.of(upstream.url(**kwargs), {"Content-Type": "application/json", "Authorization": "Bearer sk-x"})


async def test_posts_and_keeps_the_connection_alive() -> None:
    client = http1.Http1Client()
    async with Upstream(keep_alive) as upstream:
        first = await client.post(target(upstream), b'{"a": 1}', timeout_s=5, connect_timeout_s=5)
        second = await client.post(target(upstream), b'{"a": 2}', timeout_s=5, connect_timeout_s=5)
    await client.close()
    assert (first.status, first.body, second.body) == (200, b'{"n": 1}', b'{"n": 2}')
    assert first.headers[b"content-type"] == b"application/json"
    assert upstream.connections == 1
    head, _, body = upstream.requests[0].partition(b"\r\n\r\n")
    host = f"Host: 127.0.0.1:{upstream.port}".encode()
    assert head.split(b"\r\n")[:2] == [b"POST /v1/chat/completions HTTP/1.1", host]
    assert b"Content-Length: 8" in head and b"Authorization: Bearer sk-x" in head and body == b'{"a": 1}'
    # A shared client keeps no cookie: one team's upstream cookie never reaches another's request.
    assert b"cookie" not in upstream.requests[1].lower().replace(b"set-cookie", b"")


async def test_reads_chunked_compressed_and_close_delimited_answers() -> None:
    body = b'{"choices": []}' * 200
    compressed = gzip.compress(body)

    async def varied(reader: Reader, writer: Writer, upstream: Upstream) -> None:
        await upstream.read_request(reader)
        chunks = b"".join(b"%x\r\n%s\r\n" % (len(body[i:i + 700]), body[i:i + 700]) for i in range(0, len(body), 700))
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunks + b"0\r\n\r\n")
        await upstream.read_request(reader)
        writer.write(answer(compressed, b"Content-Encoding: gzip"))
        await upstream.read_request(reader)
        writer.write(answer(zlib.compress(body), b"Content-Encoding: deflate"))
        await upstream.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" + body)
        await writer.drain()

    client = http1.Http1Client()
    async with Upstream(varied) as upstream:
        answers = [await client.post(target(upstream), b"{}", timeout_s=5, connect_timeout_s=5) for _ in range(4)]
        assert client.idle == 0  # the last answer ended with its connection
    await client.close()
    assert [a.body for a in answers] == [body] * 4
    assert upstream.connections == 1


async def test_a_reused_connection_closed_before_answering_is_retried_once_on_a_new_one() -> None:
    async def times_out_after_one(reader: Reader, writer: Writer, upstream: Upstream) -> None:
        await upstream.read_request(reader)
        writer.write(answer(b"{}"))
        await writer.drain()
        if upstream.connections == 1:
            await upstream.read_request(reader)  # the keep-alive race: read, then close unanswered

    client = http1.Http1Client()
    async with Upstream(times_out_after_one) as upstream:
        await client.post(target(upstream), b"{}", timeout_s=5, connect_timeout_s=5)
        again = await client.post(target(upstream), b"{}", timeout_s=5, connect_timeout_s=5)
    await client.close()
    assert again.status == 200 and upstream.connections == 2


async def test_a_new_connection_closed_before_answering_is_not_retried() -> None:
    async def hangs_up(reader: Reader, writer: Writer, upstream: Upstream) -> None:
        await upstream.read_request(reader)

    client = http1.Http1Client()
    async with Upstream(hangs_up) as upstream:
        with pytest.raises(http1.Disconnected):
            await client.post(target(upstream), b"{}", timeout_s=5, connect_timeout_s=5)
    await client.close()
    assert upstream.connections == 1


async def test_an_answer_cut_short_is_a_disconnection() -> None:
    async def cuts(reader: Reader, writer: Writer, upstream: Upstream) -> None:
        await upstream.read_request(reader)
        writer.write(answer(b'{"choices": []}')[:-5])
        await writer.drain()

    client = http1.Http1Client()
    async with Upstream(cuts) as upstream:
        with pytest.raises(http1.Disconnected):
            await client.post(target(upstream), b"{}", timeout_s=5, connect_timeout_s=5)
    await client.close()


async def never_answers(reader: Reader, writer: Writer, upstream: Upstream) -> None:
    await upstream.read_request(reader)
    await reader.read()  # until the client gives up


async def test_a_server_that_never_answers_times_out_and_loses_the_connection() -> None:
    client = http1.Http1Client()
    async with Upstream(never_answers) as upstream:
        started = asyncio.get_running_loop().time()
        with pytest.raises(TimeoutError):
            await client.post(target(upstream), b"{}", timeout_s=0.2, connect_timeout_s=5)
        assert asyncio.get_running_loop().time() - started < 2
        await asyncio.wait_for(upstream.disconnected.wait(), 2)
    assert client.idle == 0
    await client.close()


async def test_refused_garbage_and_unknown_encodings_are_errors() -> None:
    client = http1.Http1Client()
    closed = Upstream(keep_alive)
    async with closed:
        port = closed.port
    with pytest.raises(http1.ConnectFailed):
        await client.post(http1.Target.of(f"http://127.0.0.1:{port}/v1", {}), b"{}", timeout_s=5, connect_timeout_s=5)

    async def garbage(reader: Reader, writer: Writer, upstream: Upstream) -> None:
        await upstream.read_request(reader)
        brotli = answer(b"x", b"Content-Encoding: br")
        writer.write(b"SSH-2.0-OpenSSH_9.2\r\n\r\n" if upstream.connections == 1 else brotli)
        await writer.drain()
        await reader.read()

    async with Upstream(garbage) as upstream:
        for _ in range(2):
            with pytest.raises(http1.ProtocolFailed):
                await client.post(target(upstream), b"{}", timeout_s=5, connect_timeout_s=5)
    await client.close()


async def test_cancelling_a_request_drops_its_connection() -> None:
    client = http1.Http1Client()
    async with Upstream(never_answers) as upstream:
        task = asyncio.create_task(client.post(target(upstream), b"{}", timeout_s=5, connect_timeout_s=5))
        await asyncio.sleep(0.1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.wait_for(upstream.disconnected.wait(), 2)
    assert client.idle == 0
    await client.close()


async def test_an_idle_connection_the_server_closed_is_not_reused() -> None:
    async def one_per_connection(reader: Reader, writer: Writer, upstream: Upstream) -> None:
        await upstream.read_request(reader)
        writer.write(answer(b"{}"))
        await writer.drain()  # then the server closes it, without saying so in the answer

    client = http1.Http1Client()
    async with Upstream(one_per_connection) as upstream:
        await client.post(target(upstream), b"{}", timeout_s=5, connect_timeout_s=5)
        await asyncio.sleep(0.1)  # the FIN arrives while the connection is idle
        await client.post(target(upstream), b"{}", timeout_s=5, connect_timeout_s=5)
    await client.close()
    assert upstream.connections == 2 and len(upstream.requests) == 2


async def stream_events(reader: Reader, writer: Writer, upstream: Upstream) -> None:
    while await upstream.read_request(reader) is not None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
        for number in range(3):
            event = b'data: {"n": %d}\n\n' % number
            writer.write(b"%x\r\n%s\r\n" % (len(event), event))
            await writer.drain()
            await asyncio.sleep(0.02)
        writer.write(b"0\r\n\r\n")
        await writer.drain()


async def test_a_stream_arrives_piece_by_piece_and_its_connection_is_reused() -> None:
    client = http1.Http1Client()
    async with Upstream(stream_events) as upstream:
        for _ in range(2):
            stream = await client.post_stream(target(upstream), b"{}", read_timeout_s=5, connect_timeout_s=5)
            assert (stream.status, stream.content_type) == (200, "text/event-stream")
            pieces = [piece async for piece in stream.pieces()]
            stream.close()
            assert b"".join(pieces) == b'data: {"n": 0}\n\ndata: {"n": 1}\n\ndata: {"n": 2}\n\n'
            assert len(pieces) >= 2  # relayed as they came, not at the end
    await client.close()
    assert upstream.connections == 1


async def test_a_stream_closed_early_drops_its_connection() -> None:
    client = http1.Http1Client()
    async with Upstream(stream_events) as upstream:
        stream = await client.post_stream(target(upstream), b"{}", read_timeout_s=5, connect_timeout_s=5)
        async for _ in stream.pieces():
            break
        stream.close()
        await asyncio.wait_for(upstream.disconnected.wait(), 2)  # what stops the upstream's generation
    assert client.idle == 0
    await client.close()


async def test_a_stream_that_stalls_times_out_per_read() -> None:
    async def stalls(reader: Reader, writer: Writer, upstream: Upstream) -> None:
        await upstream.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
        for number in range(12):  # 0.1 s apart: the whole outlasts the read timeout, no gap does
            event = b"data: %d\n\n" % number
            writer.write(b"%x\r\n%s\r\n" % (len(event), event))
            await writer.drain()
            await asyncio.sleep(0.1)
        await reader.read()  # then silence

    client = http1.Http1Client()
    async with Upstream(stalls) as upstream:
        # Half a second of margin for a gap: the server shares this test's event loop, which a
        # loaded CI machine can hold up.
        stream = await client.post_stream(target(upstream), b"{}", read_timeout_s=0.6, connect_timeout_s=5)
        got = b""
        with pytest.raises(TimeoutError):
            async for piece in stream.pieces():
                got += piece
        stream.close()
    await client.close()
    assert got.count(b"data:") == 12


async def test_a_slow_reader_pauses_the_upstream() -> None:
    event = b"data: " + b"x" * 16_000 + b"\n\n"

    async def floods(reader: Reader, writer: Writer, upstream: Upstream) -> None:
        await upstream.read_request(reader)
        head = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nContent-Length: %d\r\n\r\n"
        writer.write(head % (len(event) * 400))
        for _ in range(400):
            writer.write(event)
            await writer.drain()

    client = http1.Http1Client()
    async with Upstream(floods) as upstream:
        # A read timeout shorter than the reader's pause: the wait is the reader's, not the upstream's.
        stream = await client.post_stream(target(upstream), b"{}", read_timeout_s=1.0, connect_timeout_s=5)
        pieces = stream.pieces()
        total = len(await anext(pieces))
        await asyncio.sleep(1.5)  # nobody reads: the client stops reading past its high-water mark
        held = stream._connection._buffered
        assert 0 < held <= http1.HIGH_WATER + 256 * 1024
        total += sum([len(piece) async for piece in pieces])
        stream.close()
    await client.close()
    assert total == len(event) * 400


def _certificate(tmp_path: Path, name: str) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(name))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


async def test_tls_checks_the_certificate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cert, key = _certificate(tmp_path, "127.0.0.1")
    server_tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_tls.load_cert_chain(cert, key)
    async with Upstream(keep_alive, tls=server_tls) as upstream:
        # Not trusted: the handshake fails, as for any upstream with an unknown certificate.
        with pytest.raises(http1.ConnectFailed):
            await http1.Http1Client().post(target(upstream, scheme="https"), b"{}", timeout_s=5, connect_timeout_s=5)
        monkeypatch.setenv("SSL_CERT_FILE", str(cert))  # what an operator does for a private CA
        client = http1.Http1Client()
        first = await client.post(target(upstream, scheme="https"), b"{}", timeout_s=5, connect_timeout_s=5)
        second = await client.post(target(upstream, scheme="https"), b"{}", timeout_s=5, connect_timeout_s=5)
        await client.close()
    assert (first.body, second.body) == (b'{"n": 1}', b'{"n": 2}')
    assert upstream.connections == 1  # one kept-alive connection (the refused handshake never got a handler)


def test_targets_refuse_what_cannot_be_sent() -> None:
    with pytest.raises(ValueError):
        http1.Target.of("ftp://example.com/v1", {})
    with pytest.raises(ValueError):
        http1.Target.of("http://example.com/v1", {"Authorization": "Bearer x\r\nX-Injected: 1"})
    plain = http1.Target.of("https://api.example.com/v1/chat/completions?api-version=1", {})
    assert plain.origin == ("https", "api.example.com", 443)
    assert plain.head == b"POST /v1/chat/completions?api-version=1 HTTP/1.1\r\nHost: api.example.com\r\n"
    assert http1.Target.of("http://[::1]:8080/v1", {}).head.split(b"\r\n")[1] == b"Host: [::1]:8080"


async def test_bytes_after_an_answer_spoil_the_connection() -> None:
    async def says_too_much(reader: Reader, writer: Writer, upstream: Upstream) -> None:
        while await upstream.read_request(reader) is not None:
            writer.write(answer(b'{"n": 1}') + answer(b'{"n": 2}'))  # two answers to one request
            await writer.drain()

    client = http1.Http1Client()
    async with Upstream(says_too_much) as upstream:
        first = await client.post(target(upstream), b"{}", timeout_s=5, connect_timeout_s=5)
        second = await client.post(target(upstream), b"{}", timeout_s=5, connect_timeout_s=5)
    await client.close()
    assert (first.body, second.body) == (b'{"n": 1}', b'{"n": 1}')
    assert upstream.connections == 2


async def test_an_answer_head_without_end_is_refused() -> None:
    async def endless_head(reader: Reader, writer: Writer, upstream: Upstream) -> None:
        await upstream.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nX-Padding: ")
        for _ in range(200):  # one header line that never ends, 1 KiB at a time
            writer.write(b"a" * 1024)
            await writer.drain()
            await asyncio.sleep(0)
        await reader.read()

    client = http1.Http1Client()
    async with Upstream(endless_head) as upstream:
        with pytest.raises(http1.ProtocolFailed, match="head exceeds"):
            await client.post(target(upstream), b"{}", timeout_s=5, connect_timeout_s=5)
    await client.close()


async def test_an_answer_past_its_size_limit_is_refused_however_it_comes() -> None:
    big = b'{"choices": ["' + b"x" * 5000 + b'"]}'
    bomb = gzip.compress(b" " * 1_000_000)  # ~1 KiB on the wire, 1 MB unfolded

    async def answers(reader: Reader, writer: Writer, upstream: Upstream) -> None:
        await upstream.read_request(reader)
        writer.write(answer(big))  # announced by its Content-Length
        await writer.drain()
        await reader.read()

    async def chunked(reader: Reader, writer: Writer, upstream: Upstream) -> None:
        await upstream.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        for _ in range(1000):  # no length up front, and no end: only the limit stops it
            writer.write(b"400\r\n" + b"y" * 1024 + b"\r\n")
            await writer.drain()
            await asyncio.sleep(0)
        await reader.read()

    async def compressed(reader: Reader, writer: Writer, upstream: Upstream) -> None:
        await upstream.read_request(reader)
        writer.write(answer(bomb, b"Content-Encoding: gzip"))
        await writer.drain()
        await reader.read()

    client = http1.Http1Client()
    for handler in (answers, chunked, compressed):
        async with Upstream(handler) as upstream:
            with pytest.raises(http1.AnswerTooLarge):
                await client.post(target(upstream), b"{}", timeout_s=5, connect_timeout_s=5, max_body_bytes=4096)
            await asyncio.wait_for(upstream.disconnected.wait(), 2)  # the connection is dropped, not drained
        assert client.idle == 0
    async with Upstream(answers) as upstream:  # within the limit: read as ever
        within = await client.post(target(upstream), b"{}", timeout_s=5, connect_timeout_s=5, max_body_bytes=len(big))
        assert within.body == big
    await client.close()


async def test_a_stream_past_its_size_limit_ends_with_the_error_after_what_came_within_it() -> None:
    async def endless(reader: Reader, writer: Writer, upstream: Upstream) -> None:
        await upstream.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
        number = 0
        while True:  # an upstream that never ends its stream
            event = b'data: {"n": %d}\n\n' % number
            writer.write(b"%x\r\n%s\r\n" % (len(event), event))
            await writer.drain()
            await asyncio.sleep(0)
            number += 1

    client = http1.Http1Client()
    async with Upstream(endless) as upstream:
        stream = await client.post_stream(target(upstream), b"{}", read_timeout_s=5, connect_timeout_s=5,
                                          max_body_bytes=10_000)
        received = 0
        with pytest.raises(http1.AnswerTooLarge):
            async for piece in stream.pieces():
                received += len(piece)
        stream.close()
        await asyncio.wait_for(upstream.disconnected.wait(), 2)
    await client.close()
    assert 0 < received <= 10_000


async def test_spare_time_work_runs_once_the_request_is_written_and_before_its_answer() -> None:
    """While the upstream works on a request, the loop would be idle: ``spare_time`` jobs run
    then (the trace exporter builds the previous request's span there), once per exchange, JSON
    or stream, and a job that raises does not fail the request."""
    from gateway import spare_time

    seen: list[tuple[int, bool]] = []

    def job() -> None:
        # The request has been written (a connection is busy) and its answer has not been read.
        busy = [connection for connection in client._open if connection.busy]
        seen.append((len(busy), any(connection.complete for connection in busy)))

    def broken() -> None:
        raise RuntimeError("a job that fails")

    client = http1.Http1Client()
    spare_time.add(job)
    spare_time.add(broken)
    try:
        async with Upstream(keep_alive) as upstream:
            answer_ = await client.post(target(upstream), b'{"a": 1}', timeout_s=5, connect_timeout_s=5)
        async with Upstream(stream_events) as upstream:
            stream = await client.post_stream(target(upstream), b"{}", read_timeout_s=5, connect_timeout_s=5)
            pieces = [piece async for piece in stream.pieces()]
    finally:
        spare_time.remove(job)
        spare_time.remove(broken)
        await client.close()
    assert answer_.status == 200 and pieces
    assert seen == [(1, False), (1, False)]
    spare_time.run()  # removed: no longer called
    assert len(seen) == 2
