"""Helpers for the budget tests: catalogs, a webhook receiver, counter reads."""

from __future__ import annotations

import asyncio
import threading
from datetime import UTC, datetime
from typing import Any

import redis
from aiohttp import web

from gateway.catalog import Catalog, build_catalog
from gateway.config.policies import ModelsFile, PolicyBundle, TeamsFile
from gateway.pricing import to_nanos
from support.servers import free_port


def catalog_of(models: dict[str, Any], teams: dict[str, Any]) -> Catalog:
    return build_catalog(
        PolicyBundle(models=ModelsFile.model_validate(models), teams=TeamsFile.model_validate(teams))
    )


def priced_models(upstream: str = "http://127.0.0.1:9/v1") -> dict[str, Any]:
    """``priced``: worst case exactly $0.01 at max_tokens=100 (output $1e-4/token, input free)."""
    fake = {"provider": "openai", "base_url": upstream, "api_key": "${TEST_PROVIDER_KEY}", "timeout_s": 10,
            "retries": 0}
    return {
        "aliases": {
            "priced": {"deployments": [{**fake, "model": "gpt-4o-mini", "input_cost_per_token": 0.0,
                                        "output_cost_per_token": 0.0001, "max_output_tokens": 16384}]},
            "priced-pair": {"deployments": [
                {**fake, "model": "gpt-4o-mini", "input_cost_per_token": 1e-6, "output_cost_per_token": 1e-4},
                {**fake, "model": "gpt-4", "input_cost_per_token": 3e-6, "output_cost_per_token": 2e-4,
                 "weight": 0},
            ]},
            "embed": {"kind": "embedding", "deployments": [
                {**fake, "model": "text-embedding-3-small", "input_cost_per_token": 1e-6,
                 "output_cost_per_token": 0.0}]},
            "free": {"deployments": [{"provider": "mock", "model": "m", "free": True}]},
        }
    }


WORST = to_nanos(0.01)


def period_key(team: str, period: str = "daily", now: datetime | None = None) -> str:
    from gateway.budgets.policy import window

    return "gwb:{" + team + "}:" + window(period, now or datetime.now(UTC)).label  # type: ignore[arg-type]


def counters(client: redis.Redis, team: str, period: str = "daily", *, shadow: bool = False) -> dict[str, int]:
    """The period's spent (``s:FIELD``) and reserved (``r:FIELD``) counters; the team's default to 0.

    The shadow scope's (``s:sh``, ``r:sh``) are left out unless ``shadow``."""
    raw: dict[bytes, bytes] = client.hgetall(period_key(team, period))  # type: ignore[assignment]  # bytes: no decode_responses
    found = {k.decode(): int(v) for k, v in raw.items() if k.decode().startswith(("s:", "r:"))}
    if not shadow:
        found = {name: value for name, value in found.items() if name[2:] != "sh"}
    return {"s:t": 0, "r:t": 0, **found}


class WebhookReceiver:
    """A tiny aiohttp server, in its own thread, that keeps every JSON body POSTed to it."""

    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/hook"
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="webhook-receiver")
        self._runner: web.AppRunner | None = None

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)

        async def hook(request: web.Request) -> web.Response:
            self.received.append(await request.json())
            return web.Response(status=204)

        async def start() -> None:
            app = web.Application()
            app.router.add_post("/hook", hook)
            self._runner = web.AppRunner(app)
            await self._runner.setup()
            await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
            self._ready.set()

        self._loop.run_until_complete(start())
        self._loop.run_forever()

    def start(self) -> WebhookReceiver:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("webhook receiver did not start")
        return self

    def stop(self) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    async def wait_for(self, count: int, seconds: float = 10.0) -> list[dict[str, Any]]:
        """Wait (without blocking the caller's loop) until ``count`` alerts arrived."""
        for _ in range(int(seconds / 0.02)):
            if len(self.received) >= count:
                break
            await asyncio.sleep(0.02)
        return list(self.received)
