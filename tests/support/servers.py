"""Run ASGI apps under a real uvicorn server in a background thread, for tests.

A real server (rather than an in-process ASGI transport) is what lets the tests use unmodified
clients (the openai SDK, litellm, aiohttp) and exercise real HTTP framing: chunked streams, early
body close, keep-alive.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import uvicorn

__all__ = ["free_port", "start_uvicorn_in_thread"]


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago (for processes that must bind it themselves)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _wait_until_accepting(host: str, port: int, thread: threading.Thread, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if not thread.is_alive():
            raise RuntimeError("uvicorn exited before it accepted connections")
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing accepted connections on {host}:{port} within {timeout}s") from None
            time.sleep(0.01)


def start_uvicorn_in_thread(
    app: Any,
    host: str = "127.0.0.1",
    *,
    startup_timeout: float = 10.0,
    **config: Any,
) -> tuple[str, Callable[[], None]]:
    """Serve ``app`` on a free port; return its base URL (``http://host:port``) and a stop function.

    The listening socket is bound here and handed to uvicorn, so there is no window in which another
    process could take the port between choosing and binding it. Extra keyword arguments go to
    ``uvicorn.Config`` (e.g. ``lifespan="off"``).
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, 0))
    port = int(sock.getsockname()[1])
    settings: dict[str, Any] = {
        "log_level": "warning",
        "access_log": False,
        "http": "httptools",
        "loop": "asyncio",
        "timeout_graceful_shutdown": 2,
    }
    settings.update(config)
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, **settings))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name=f"uvicorn:{port}", daemon=True)
    thread.start()
    try:
        _wait_until_accepting(host, port, thread, startup_timeout)
        while not server.started and thread.is_alive():  # lifespan startup may still be running
            time.sleep(0.005)
    except BaseException:
        server.should_exit = True
        thread.join(timeout=5)
        sock.close()
        raise

    stopped = False

    def stop() -> None:
        nonlocal stopped
        if stopped:
            return
        stopped = True
        server.should_exit = True
        thread.join(timeout=10)
        if thread.is_alive():  # a handler ignored graceful shutdown: stop waiting for it
            server.force_exit = True
            thread.join(timeout=5)
        sock.close()

    return f"http://{host}:{port}", stop
