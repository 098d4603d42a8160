"""Rollouts on a fleet, through real gateway processes: two replicas on one Redis and
PostgreSQL roll a failing prompt canary back by themselves."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import FakeHandle, make_gateway
from test_rollouts_e2e import TEAMS, apply_rollouts, models, wait_until

from support.budgets import WebhookReceiver
from support.gateway_proc import ADMIN_KEY, GatewayProcess
from support.ledger import new_key

PROMPT = """\
name: greet
model: {model}
messages:
  - role: user
    content: "Greet {marker}"
"""


def fleet_models(upstream: str) -> dict[str, Any]:
    found = models(upstream)
    found["aliases"]["steady"] = {"deployments": [{"provider": "mock", "model": "mock-steady", "free": True}]}
    # The canary version's model fails one call in five.
    found["aliases"]["flaky"] = {
        "deployments": [
            {"provider": "mock", "model": "mock-flaky", "free": True, "retries": 0, "mock": {"error_rate": 0.2}}
        ]
    }
    return found


def metric_sum(procs: list[GatewayProcess], line_start: str) -> float:
    total = 0.0
    for proc in procs:
        for line in httpx.get(f"{proc.url}/metrics").text.splitlines():
            if line.startswith(line_start):
                total += float(line.rsplit(" ", 1)[1])
    return total


@pytest.mark.redis
@pytest.mark.postgres
def test_two_replicas_roll_a_failing_prompt_canary_back_by_themselves(
    tmp_path: Path, fake_upstream: FakeHandle, fresh_pg_url: str, redis_url: str
) -> None:
    # Windows long enough for min_requests at 50 % even on a loaded machine.
    interval_s, failure_limit, min_requests = 3.0, 2, 30
    config: dict[str, Any] = {
        "models": fleet_models(fake_upstream.url),
        "teams": TEAMS,
        "redis_url": redis_url,
        "extra": {
            "ledger": {"flush_interval_ms": 50},
            "rollouts": {"lease_s": 2, "poll_interval_s": 0.25},
            # One signing key for the fleet: each replica verifies every version.
            "prompts": {"signing_key_file": str(tmp_path / "signing.key")},
        },
    }
    replicas = [make_gateway(tmp_path / name, fake_upstream.url, fresh_pg_url, **config).start() for name in "ab"]
    first = replicas[0]
    receiver = WebhookReceiver().start()
    stop = threading.Event()
    seen: list[tuple[float, str | None, str | None, int]] = []
    try:
        for marker, model in (("one", "steady"), ("two", "flaky")):
            (first.config.root / "greet.yaml").write_text(PROMPT.format(marker=marker, model=model))
            first.cli("prompts", "push", str(first.config.root / "greet.yaml"), "-m", marker)
        first.cli("prompts", "label", "set", "greet", "beta", "1")
        _, key = new_key(first.url, ADMIN_KEY, "gamma")
        apply_rollouts(
            first,
            {
                "rollouts": {
                    "greet-two": {
                        "target": {"prompt": "greet", "label": "beta", "canary": {"version": 2}},
                        "steps": [{"weight": w} for w in (50, 60, 70, 80, 100)],
                        "interval_s": interval_s,
                        "min_requests": min_requests,
                        "failure_limit": failure_limit,
                        "checks": [{"metric": "error_rate", "max_over_stable": 0.02}],
                        "webhook_url": receiver.url,
                    }
                }
            },
        )

        def traffic(offset: int) -> None:
            i = offset
            with httpx.Client(timeout=20) as client:
                while not stop.is_set():
                    proc = replicas[i % 2]
                    response = client.post(
                        f"{proc.url}/v1/chat/completions",
                        headers={"Authorization": f"Bearer {key}"},
                        json={"model": "prompt:greet@beta", "user": f"user-{i % 400}"},
                    )
                    seen.append(
                        (
                            time.monotonic(),
                            response.headers.get("x-gateway-variant"),
                            response.headers.get("x-prompt-version"),
                            response.status_code,
                        )
                    )
                    i += 1

        senders = [threading.Thread(target=traffic, args=(n,), daemon=True) for n in range(6)]
        for sender in senders:
            sender.start()

        def status(proc: GatewayProcess) -> dict[str, Any]:
            found: dict[str, Any] = httpx.get(
                f"{proc.url}/admin/rollouts/greet-two", headers={"Authorization": f"Bearer {ADMIN_KEY}"}
            ).json()
            return found

        wait_until(lambda: status(replicas[1]).get("status") == "aborted", timeout=40)
        aborted_at = time.monotonic()
        time.sleep(1.0)  # both replicas' watchers have polled by now (every 0.25 s)
        cutoff = time.monotonic()
        time.sleep(1.0)
        stop.set()
        for sender in senders:
            sender.join(10)
        final = status(replicas[0])
        rollbacks = metric_sum(replicas, 'gateway_rollout_rollbacks_total{rollout="greet-two"}')
        canary_errors = metric_sum(replicas, 'gateway_rollout_errors_total{rollout="greet-two",variant="canary"}')
        stable_errors = metric_sum(replicas, 'gateway_rollout_errors_total{rollout="greet-two",variant="stable"}')
        canary_requests = metric_sum(replicas, 'gateway_rollout_requests_total{rollout="greet-two",variant="canary"}')
    finally:
        stop.set()
        for proc in replicas:
            proc.stop()
        receiver.stop()

    # Rolled back at the failure_limit-th failing window in a row, plus one interval of slack
    # (stored times: the start and the abort). A window with fewer than min_requests canary
    # requests is inconclusive and the verdict waits for the next one (a CI machine loaded by
    # coverage and another worker once served 26 in the first 3 s): each such window adds one
    # interval, and only lack of traffic may make one.
    took = datetime.fromisoformat(final["updated_at"]) - datetime.fromisoformat(final["started_at"])
    verdicts = [(e["at"], e["verdict"], e["variants"]["canary"]["requests"]) for e in final["history"]]
    assert [verdict for _, verdict, _ in verdicts][-failure_limit:] == ["fail"] * failure_limit
    inconclusive = [requests for _, verdict, requests in verdicts if verdict == "inconclusive"]
    assert all(requests < min_requests for requests in inconclusive), verdicts
    windows = failure_limit + len(inconclusive)
    assert took.total_seconds() <= interval_s * windows + interval_s, (final["started_at"], verdicts)
    # Once every replica had polled, no request got the canary (nor its prompt version).
    late = [(variant, version) for at, variant, version, _ in seen if at > cutoff]
    assert late and set(late) == {(None, "1")}, Counter((v, p, s) for at, v, p, s in seen if at > cutoff)
    assert any(variant == "canary" for at, variant, _, _ in seen if at < aborted_at)
    # The metric (on whichever replica led), the per-variant counters, the webhook, the audit entry.
    assert rollbacks == 1
    assert canary_requests > 0 and canary_errors > 0 and stable_errors == 0
    [hook] = receiver.received
    assert hook["event"] == "rollout.rolled_back" and hook["rollout"] == "greet-two" and hook["verdict"] == "fail"
    entries = json.loads(first.cli("audit", "list", "--target", "rollout:greet-two", "--format", "json").stdout)
    assert entries[-1]["action"] == "rollout.abort" and entries[-1]["actor_key_id"] == "rollout-controller"
    [check] = entries[-1]["after"]["detail"]["analysis"]["checks"]
    assert check["metric"] == "error_rate" and check["ok"] is False and check["canary"] > check["bound"]
    # Each access line of a request in the rollout names it and the variant.
    lines = [
        json.loads(line)
        for proc in replicas
        for line in proc.log().splitlines()
        if line.startswith("{") and '"gateway.access"' in line
    ]
    in_rollout = [line for line in lines if line.get("rollout") == "greet-two"]
    assert in_rollout and {line["variant"] for line in in_rollout} == {"stable", "canary"}
