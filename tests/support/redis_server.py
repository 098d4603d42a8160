"""A private ``redis-server`` on a free port, for tests that kill, restart, password-protect or
TLS-wrap their own Redis without touching the shared one. No persistence: a restart is empty."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import redis

from support.servers import free_port


class RedisServer:
    """``RedisServer("--requirepass", "pw").start()``; extra arguments go to ``redis-server``."""

    def __init__(self, *options: str, tls: bool = False) -> None:
        self.options = options
        self.tls = tls
        self.port = free_port()
        self.url = self.url_for()
        self._dir = Path(tempfile.mkdtemp(prefix="gw-redis-"))
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> RedisServer:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed")
        ports = ["--port", "0", "--tls-port", str(self.port)] if self.tls else ["--port", str(self.port)]
        self._proc = subprocess.Popen(
            [binary, *ports, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(self._dir),
             *self.options],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self._answers():
                return self
            time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        """Kill it (no goodbye to clients); ``start`` again brings it back, empty, on the same port."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait(5)
        self._proc = None

    def url_for(self, credentials: str = "", db: int = 0, query: str = "") -> str:
        scheme = "rediss" if self.tls else "redis"
        at = f"{credentials}@" if credentials else ""
        host = "localhost" if self.tls else "127.0.0.1"
        return f"{scheme}://{at}{host}:{self.port}/{db}{query}"

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port)

    def is_up(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def _answers(self) -> bool:
        """Up once it answers a PING, even with an error (a password-protected server says NOAUTH)."""
        client = redis.Redis(port=self.port, socket_timeout=0.2, ssl=self.tls, ssl_cert_reqs="none")
        try:
            return bool(client.ping())
        except (redis.AuthenticationError, redis.ResponseError):
            return True
        except redis.RedisError:
            return False
        finally:
            client.close()
