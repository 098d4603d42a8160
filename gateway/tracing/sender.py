"""POSTing trace batches from a thread of their own, not from the event loop.

A batch POST done on the loop (aiohttp: build the request, write 50-100 KiB, read the answer)
held it for long enough to put ~0.5 ms on the gateway's p99 at concurrency 1 in the full
benchmark profile, though it happens only once per batch: the request that arrived meanwhile
waited for it. Here each destination has one daemon thread that sends with a blocking
``urllib3`` pool (keep-alive, one connection), at a lower CPU priority (``gateway.threads``),
and hands the outcome back to the loop. The thread holds the GIL only between its system
calls, tens of microseconds at a time.

The thread is a daemon: a destination that hangs past a graceful stop's bound cannot hold the
process up. At most one batch per destination is in flight (the exporter awaits each export),
so nothing queues here.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from dataclasses import dataclass

import urllib3

from gateway.threads import run_as_background


@dataclass(frozen=True, slots=True)
class _Post:
    loop: asyncio.AbstractEventLoop
    outcome: asyncio.Future[str | None]
    url: str
    headers: dict[str, str]
    payload: bytes


class BatchSender:
    """Sends POSTs to one destination from one thread; ``post`` awaits the outcome: ``None``
    when the destination took the payload (2xx), else why not (``HTTP 500``, ``no answer
    within 10.0s``, the error's type)."""

    def __init__(self, name: str, *, timeout_s: float) -> None:
        self.name = name
        self.timeout_s = timeout_s
        self._posts: queue.SimpleQueue[_Post | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        # No retries: a batch a destination refused is dropped and counted by the exporter.
        self._pool = urllib3.PoolManager(
            num_pools=1, maxsize=1, retries=False, timeout=urllib3.Timeout(total=timeout_s)
        )

    async def post(self, url: str, headers: dict[str, str], payload: bytes) -> str | None:
        loop = asyncio.get_running_loop()
        outcome: asyncio.Future[str | None] = loop.create_future()
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=f"trace-sender-{self.name}", daemon=True)
                self._thread.start()
        self._posts.put(_Post(loop, outcome, url, headers, payload))
        return await outcome

    def close(self) -> None:
        """Stop the thread once the POST in hand (if any) ends; never waits for it."""
        with self._lock:
            if self._thread is not None:
                self._posts.put(None)
                self._thread = None

    def _run(self) -> None:
        run_as_background()  # never preempts the loop, never starves holding the GIL
        while True:
            post = self._posts.get()
            if post is None:
                self._pool.clear()
                return
            result = self._send(post)
            with contextlib.suppress(RuntimeError):  # the loop closed while the POST was out: nobody waits
                post.loop.call_soon_threadsafe(_settle, post.outcome, result)

    def _send(self, post: _Post) -> str | None:
        try:
            response = self._pool.request("POST", post.url, body=post.payload, headers=post.headers)
        except urllib3.exceptions.NewConnectionError:  # refused (a ConnectTimeoutError by ancestry)
            return "NewConnectionError"
        except urllib3.exceptions.TimeoutError:
            return f"no answer within {self.timeout_s}s"
        except Exception as error:  # whatever it was, the thread goes on; its name is the reason
            return type(error).__name__
        if response.status >= 300:
            return f"HTTP {response.status}"
        return None


def _settle(outcome: asyncio.Future[str | None], result: str | None) -> None:
    if not outcome.done():  # a stop may have given up on it (cancelled)
        outcome.set_result(result)
