"""POSTing trace batches from the event loop, through the gateway's own HTTP/1.1 client.

Each destination has one ``BatchSender``: one keep-alive connection (``gateway.providers.http1``,
the client of the upstream calls), one POST at a time (the exporter awaits each export),
bounded by ``timeout_s``. Nothing is retried: a batch a destination did not take is dropped and
counted by the exporter.

Where the POST runs has moved twice, each time on a measurement (``benchmarks/README.md``):

* **On the loop through aiohttp** (until December 2026): building and writing a 50-100 KiB
  request and reading its answer held the loop long enough to put ~0.5 ms on the full profile's
  p99 at concurrency 1, though it happens once per batch of 256 spans.
* **On a thread of its own, through urllib3**: the loop was free, but the thread's Python ran on
  the loop's core. At concurrency 1 every one of 31 POSTs overlapped a request slower than 2 ms.
* **On the loop through ``http1``** (now): the request's head is built once per destination, the
  payload leaves in one write, llhttp parses the short answer. That costs the loop 0.1-0.15 ms a
  POST (under uvloop, the receiver in the same process: 94 µs for an empty batch, 150 µs for
  67 KB of 256 spans; the thread's hand-off had cost the loop 23-36 µs, but the thread's own
  work, ~0.3 ms more a POST, ran on the same core). The full profile at concurrency 1, five
  interleaved rounds of 10 s against the thread: p50 1.09 against 1.20 ms, p99 3.07 against
  3.79 ms, CPU 882 against 952 µs a request.

A destination that hangs holds no thread: the POST's deadline drops its connection, and a stop
that gives up on an export cancels it, which drops the connection too.
"""

from __future__ import annotations

from gateway.providers import http1

#: The most of a destination's answer that is read (an OTLP answer is a few bytes of protobuf).
MAX_ANSWER_BYTES = 1024 * 1024


class BatchSender:
    """POSTs to one destination; ``post`` returns ``None`` when the destination took the payload
    (2xx), else why not (``HTTP 500``, ``no answer within 10.0s``, the error's type)."""

    def __init__(self, name: str, *, timeout_s: float) -> None:
        self.name = name
        self.timeout_s = timeout_s
        self._client = http1.Http1Client(max_idle=1)
        # The destination's URL and headers never change; their request head is built once.
        self._target: tuple[str, tuple[tuple[str, str], ...], http1.Target] | None = None

    async def post(self, url: str, headers: dict[str, str], payload: bytes) -> str | None:
        key = tuple(headers.items())
        if self._target is None or self._target[:2] != (url, key):
            try:
                self._target = (url, key, http1.Target.of(url, headers))
            except ValueError:
                return "ValueError"  # not an http(s) URL, or a header that cannot be sent
        try:
            answer = await self._client.post(
                self._target[2], payload, timeout_s=self.timeout_s, connect_timeout_s=self.timeout_s,
                max_body_bytes=MAX_ANSWER_BYTES,
            )
        except TimeoutError:
            return f"no answer within {self.timeout_s}s"
        except (http1.ConnectFailed, http1.Disconnected, http1.ProtocolFailed, http1.AnswerTooLarge, OSError) as error:
            return type(error).__name__
        if answer.status >= 300:
            return f"HTTP {answer.status}"
        return None

    async def close(self) -> None:
        """Drop the kept connection (a POST still out has been cancelled by whoever awaited it)."""
        await self._client.close()
