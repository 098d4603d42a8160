"""Sticky assignment at volume, through a real gateway process: 20,000 requests from 2,000
users at a 10 % canary weight, then 25 %."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import httpx
from conftest import FakeHandle, make_gateway
from test_rollouts_e2e import TEAMS, apply_rollouts, models, wait_until

from support.gateway_proc import ADMIN_KEY
from support.ledger import new_key


def test_twenty_thousand_requests_from_two_thousand_users_split_stickily(
    tmp_path: Path, fake_upstream: FakeHandle
) -> None:
    """At 10 %: the canary's share of users within 1.5 points, each user sees one variant;
    after the weight goes to 25 %, no user moves from canary back to stable."""
    proc = make_gateway(
        tmp_path,
        fake_upstream.url,
        f"sqlite:///{tmp_path / 'gateway.db'}",
        models=models(fake_upstream.url),
        teams=TEAMS,
        extra={"server": {"host": "127.0.0.1", "port": 8080, "access_log": False}},
    ).start()

    def rollout(weight: float) -> dict[str, Any]:
        # The analysis never moves it (a check every hour): the test moves the weight itself.
        return {
            "rollouts": {
                "split-next": {
                    "target": {"alias": "split", "canary": {"deployment": 1}},
                    "steps": [{"weight": weight}, {"weight": 100}],
                    "interval_s": 3600,
                }
            }
        }

    async def send(key: str, users: int, rounds: int) -> dict[str, list[str]]:
        """Each user ``rounds`` times, 32 at once, over aiohttp (about half the CPU of httpx per
        request: the client shares the machine's cores with the gateway)."""
        import aiohttp

        seen: dict[str, list[str]] = {}
        resent: list[str] = []
        queue = [f"user-{user}" for _ in range(rounds) for user in range(users)]
        queue.reverse()
        url = f"{proc.url}/v1/chat/completions"
        headers = {"Authorization": f"Bearer {key}"}

        async def ask(session: aiohttp.ClientSession, user: str) -> str:
            body = {"model": "split", "user": user, "messages": [{"role": "user", "content": "hi"}]}
            for attempt in range(3):
                try:
                    async with session.post(url, json=body, headers=headers) as response:
                        assert response.status == 200, await response.text()
                        await response.read()
                        return response.headers["x-gateway-variant"]
                except aiohttp.ClientConnectionError:  # a kept-alive connection the server closed
                    if attempt == 2:
                        raise
                    resent.append(user)
            raise AssertionError("unreachable")

        async def worker(session: aiohttp.ClientSession) -> None:
            while queue:
                user = queue.pop()
                seen.setdefault(user, []).append(await ask(session, user))

        async with aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=32), timeout=aiohttp.ClientTimeout(total=30)
        ) as session:
            await asyncio.gather(*(worker(session) for _ in range(32)))
        print(f"\n{len(resent)} requests sent again after a closed connection")
        return seen

    try:
        _, key = new_key(proc.url, ADMIN_KEY, "alpha")
        apply_rollouts(proc, rollout(10))
        wait_until(
            lambda: (
                "x-gateway-variant"
                in httpx.post(
                    f"{proc.url}/v1/chat/completions",
                    headers={"Authorization": f"Bearer {key}"},
                    json={"model": "split", "user": "probe", "messages": [{"role": "user", "content": "hi"}]},
                ).headers
            )
        )
        started = time.monotonic()
        at_10 = asyncio.run(send(key, 2000, 10))
        took = time.monotonic() - started
        apply_rollouts(proc, rollout(25))
        time.sleep(1.5)  # the policy watcher polls every 0.5 s
        at_25 = asyncio.run(send(key, 2000, 2))
    finally:
        proc.stop()

    assert sum(len(variants) for variants in at_10.values()) == 20_000 and len(at_10) == 2000
    assert all(len(set(variants)) == 1 for variants in at_10.values()), "a user saw both variants"
    canary_10 = {user for user, variants in at_10.items() if variants[0] == "canary"}
    share_10 = 100 * sum(variants.count("canary") for variants in at_10.values()) / 20_000
    assert abs(share_10 - 10) <= 1.5, share_10
    assert all(len(set(variants)) == 1 for variants in at_25.values())
    canary_25 = {user for user, variants in at_25.items() if variants[0] == "canary"}
    assert canary_10 <= canary_25, f"{len(canary_10 - canary_25)} users moved from canary back to stable"
    share_25 = 100 * len(canary_25) / 2000
    assert abs(share_25 - 25) <= 1.5, share_25
    print(f"\n20,000 requests in {took:.1f} s; canary share {share_10:.2f} % at 10, {share_25:.2f} % at 25")
