"""The bare passthrough baseline: ``python -m benchmarks.passthrough --upstream URL --port N``.

The least a Python proxy can do per request: raw ASGI under uvicorn (uvloop, httptools), the
body read and forwarded as bytes through one pooled aiohttp session, the answer relayed as is
(a stream piece by piece, as it arrives). No auth, no parsing, no logging, no metrics. Its CPU
time per request, measured in the same run, is the yardstick for the gateway's target
("CPU per request ≤ 2.5x the bare passthrough's").
"""

from __future__ import annotations

import argparse
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from typing import Any

import aiohttp
import uvicorn

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

# Hop-by-hop or recomputed headers that must not be copied from one connection to the other.
_DROP = frozenset({b"host", b"content-length", b"connection", b"transfer-encoding", b"keep-alive"})
_HEALTH = b'{"status":"ok"}'


class Passthrough:
    """Forward every request to ``upstream`` + path; ``/_health`` answers locally."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.session: aiohttp.ClientSession | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
        elif scope["type"] == "http":
            await self._http(scope, receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                # Same pool settings as the gateway's upstream client, so only the work differs.
                connector = aiohttp.TCPConnector(limit=1000, limit_per_host=0, keepalive_timeout=60)
                self.session = aiohttp.ClientSession(
                    connector=connector, skip_auto_headers=("User-Agent",), timeout=aiohttp.ClientTimeout(total=60)
                )
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self.session is not None:
                    await self.session.close()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["path"] == "/_health":
            await send(
                {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]}
            )
            await send({"type": "http.response.body", "body": _HEALTH})
            return
        chunks = []
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"] if k not in _DROP}
        assert self.session is not None
        async with self.session.request(
            scope["method"], self.upstream + scope["path"], data=b"".join(chunks), headers=headers
        ) as response:
            out = [(k.lower(), v) for k, v in response.raw_headers if k.lower() not in _DROP]
            if response.headers.get("content-type", "").startswith("text/event-stream"):
                await send({"type": "http.response.start", "status": response.status, "headers": out})
                async for piece in response.content.iter_any():
                    await send({"type": "http.response.body", "body": piece, "more_body": True})
                await send({"type": "http.response.body", "body": b""})
                return
            body = await response.read()
        out.append((b"content-length", str(len(body)).encode()))
        await send({"type": "http.response.start", "status": response.status, "headers": out})
        await send({"type": "http.response.body", "body": body})


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.passthrough", description=__doc__.split("\n\n")[0])
    parser.add_argument("--upstream", required=True, help="base URL to forward to, e.g. http://127.0.0.1:9999")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8090)
    args = parser.parse_args(argv)
    uvicorn.run(
        Passthrough(args.upstream),
        host=args.host,
        port=args.port,
        loop="uvloop",
        http="httptools",
        lifespan="on",
        access_log=False,
        log_level="warning",
        server_header=False,
        date_header=False,
        timeout_keep_alive=120,
        backlog=4096,
    )


if __name__ == "__main__":
    main()
