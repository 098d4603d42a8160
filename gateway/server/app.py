"""The ASGI entry point: ``/v1`` to the raw hot path, health and metrics inline, the rest to FastAPI.

``create_app`` is what uvicorn runs (as a factory, so each worker builds its own runtime).
Start-up loads config and policies, opens storage and runs migrations; shutdown drains the
background work (ledger, traces) before closing connections.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import orjson

from gateway import heap
from gateway.config.settings import Settings, load_settings
from gateway.observe import configure_logging
from gateway.runtime import Runtime, create_runtime
from gateway.server.guard import AdminGuard
from gateway.server.openai_api import OpenAIApi, Receive, Scope, Send

log = logging.getLogger("gateway.server")


class GatewayApp:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.runtime: Runtime | None = None
        self._openai: OpenAIApi | None = None
        self._admin: Any = None
        self._admin_lock = asyncio.Lock()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            path: str = scope["path"]
            if path.startswith("/v1/") and self._openai is not None:
                await self._openai(scope, receive, send)
            elif path == "/health/live":
                await _json(send, 200, {"status": "ok"})
            elif path == "/health/ready":
                await self._ready(send)
            elif path == "/metrics" and self.runtime is not None:
                body, content_type = self.runtime.metrics.render()
                await _raw(send, 200, body, content_type.encode())
            elif self._admin is not None:
                await self._admin(scope, receive, send)
            elif self.runtime is not None:
                await (await self._build_admin())(scope, receive, send)
            else:
                await _json(send, 503, {"error": {"message": "starting", "type": "service_unavailable",
                                                  "param": None, "code": "starting"}})
        elif kind == "lifespan":
            await self._lifespan(receive, send)

    async def start(self) -> None:
        runtime = await create_runtime(self.settings)
        self.runtime = runtime
        self._openai = OpenAIApi(runtime)
        heap.settle(self.settings.server.gc_threshold)

    async def _build_admin(self) -> Any:
        """The FastAPI admin app, built on the first admin request.

        Importing FastAPI and building the routers and their OpenAPI models takes ~0.4 s and
        ~11 MiB; a replica that only proxies ``/v1`` never needs it, and start-up to ready is
        the figure an autoscaler waits on. The first admin call pays it once.
        """
        async with self._admin_lock:
            if self._admin is None:
                from gateway.admin import create_admin_app

                assert self.runtime is not None
                self._admin = AdminGuard(
                    create_admin_app(self.runtime), self.runtime.keys.authenticate,
                    max_body=self.settings.server.admin_max_body_bytes,
                )
                heap.freeze_long_lived()  # the admin app lives as long as the process
        return self._admin

    async def stop(self) -> None:
        if self.runtime is not None:
            await self.runtime.close()
            log.info("gateway stopped cleanly")
            # uvicorn re-raises the signal it stopped for once this returns: nothing after it
            # runs, so the line must reach stderr now.
            for handler in logging.getLogger().handlers:
                handler.flush()

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.start()
                except Exception as exc:
                    log.exception("start-up failed")
                    # Log lines are written by a thread: let the reason reach stderr before
                    # uvicorn's own "startup failed" (nothing is being served yet to block).
                    for handler in logging.getLogger().handlers:
                        handler.flush()
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                try:
                    await self.stop()
                finally:
                    await send({"type": "lifespan.shutdown.complete"})
                return

    async def _ready(self, send: Send) -> None:
        if self.runtime is None:
            await _json(send, 503, {"status": "starting"})
            return
        checks: dict[str, str] = {}
        try:
            await self.runtime.db.ping()
            checks["storage"] = "ok"
        except Exception as exc:
            checks["storage"] = f"error: {type(exc).__name__}"
        for name, check in self.runtime.readiness_checks.items():
            try:
                await check()
                checks[name] = "ok"
            except Exception as exc:
                checks[name] = f"error: {type(exc).__name__}"
        ok = all(value == "ok" for value in checks.values())
        await _json(send, 200 if ok else 503, {"status": "ready" if ok else "not ready", "checks": checks})


async def _raw(send: Send, status: int, body: bytes, content_type: bytes) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", content_type), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def _json(send: Send, status: int, payload: Any) -> None:
    await _raw(send, status, orjson.dumps(payload), b"application/json")


def create_app(config: str | Path | None = None) -> GatewayApp:
    """uvicorn's factory: reads ``GATEWAY_CONFIG`` (set by ``gateway serve``) when no path is given."""
    settings = load_settings(config)
    configure_logging(settings.server.log_level, settings.server.log_format)
    return GatewayApp(settings)
