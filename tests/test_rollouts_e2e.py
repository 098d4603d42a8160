"""Rollouts through a real gateway process: a policy applied with `gateway policies apply`
splits an alias' traffic stickily by user, and the ledger records the variant and rollout."""

from __future__ import annotations

import contextlib
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from conftest import FakeHandle, make_gateway

from gateway.storage.schema import ledger
from support.gateway_proc import ADMIN_KEY, GatewayProcess, default_models
from support.ledger import new_key, wait_for_rows

ROLLOUT = {
    "rollouts": {
        "split-next": {
            "description": "mock-next behind split",
            "target": {"alias": "split", "canary": {"deployment": 1}},
            "steps": [{"weight": 30}, {"weight": 60}, {"weight": 100}],
            "interval_s": 60,
            "match": {"teams": ["alpha"]},
        }
    }
}

TEAMS = {"teams": {"alpha": {}, "beta": {}, "gamma": {}}}


def models(upstream: str) -> dict[str, Any]:
    found = default_models(upstream)
    found["aliases"]["split"] = {"deployments": [
        {"provider": "mock", "model": "mock-stable", "free": True},
        {"provider": "mock", "model": "mock-next", "free": True, "weight": 0},
    ]}
    return found


@pytest.fixture
def rollout_gateway(tmp_path: Path, fake_upstream: FakeHandle):  # type: ignore[no-untyped-def]
    proc = make_gateway(tmp_path, fake_upstream.url, f"sqlite:///{tmp_path / 'gateway.db'}",
                        models=models(fake_upstream.url), teams=TEAMS).start()
    yield proc
    proc.stop()


def ask(client: httpx.Client, key: str, request_id: str, *, user: str | None = None,
        session: str | None = None, content: str = "hi") -> httpx.Response:
    body: dict[str, Any] = {"model": "split", "messages": [{"role": "user", "content": content}]}
    if user is not None:
        body["user"] = user
    headers = {"Authorization": f"Bearer {key}", "x-request-id": request_id}
    if session is not None:
        headers["x-session-id"] = session
    response = client.post("/v1/chat/completions", json=body, headers=headers)
    assert response.status_code == 200, response.text
    return response


def apply_rollouts(proc: GatewayProcess, rollouts: dict[str, Any]) -> None:
    (proc.config.root / "policies" / "rollouts.yaml").write_text(yaml.safe_dump(rollouts))
    proc.cli("policies", "apply", "-m", "start a rollout")


def wait_until(predicate: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


async def test_an_applied_rollout_splits_traffic_stickily_by_user(rollout_gateway: GatewayProcess) -> None:
    proc = rollout_gateway
    _, alpha = new_key(proc.url, ADMIN_KEY, "alpha")
    _, beta = new_key(proc.url, ADMIN_KEY, "beta")
    with httpx.Client(base_url=proc.url, timeout=20) as client:
        before = ask(client, alpha, "before-1", user="u-0")
        assert "x-gateway-variant" not in before.headers
        apply_rollouts(proc, ROLLOUT)
        wait_until(lambda: "x-gateway-variant" in ask(client, alpha, "probe", user="u-0").headers)

        seen: dict[str, set[str]] = {}
        for round_ in range(3):
            for i in range(80):
                response = ask(client, alpha, f"ro-{round_}-{i}", user=f"user-{i}")
                assert response.headers["x-gateway-rollout"] == "split-next"
                seen.setdefault(f"user-{i}", set()).add(response.headers["x-gateway-variant"])
                answered_by = response.json()["model"]
                expected = "mock-next" if response.headers["x-gateway-variant"] == "canary" else "mock-stable"
                assert answered_by == expected
        assert all(len(variants) == 1 for variants in seen.values()), "a user saw both variants"
        shares = Counter(next(iter(v)) for v in seen.values())
        assert 10 <= shares["canary"] <= 40 and shares["canary"] + shares["stable"] == 80

        # Without a user, the x-session-id header is the sticky subject.
        by_session = {ask(client, alpha, f"s-{i}", session="session-7").headers["x-gateway-variant"]
                      for i in range(10)}
        assert len(by_session) == 1
        # A team the rollout does not match is routed as before: no variant, no rollout.
        other = ask(client, beta, "beta-1", user="user-1")
        assert "x-gateway-variant" not in other.headers and other.json()["model"] == "mock-stable"

    rows = await wait_for_rows(proc.config.database_url, ledger.c.request_id.like("ro-%"),
                               until=lambda found: len(found) >= 240)
    assert len(rows) == 240
    for row in rows:
        user = row["user"]
        assert row["rollout_id"] == "split-next"
        assert {row["variant"]} == seen[user]
        assert row["model"] == ("mock-next" if row["variant"] == "canary" else "mock-stable")
    beta_rows = await wait_for_rows(proc.config.database_url, ledger.c.request_id == "beta-1", until=bool)
    assert (beta_rows[0]["variant"], beta_rows[0]["rollout_id"]) == (None, None)


PROMPT = """\
name: greet
model: split
messages:
  - role: user
    content: "Greet {marker}"
"""


async def test_a_prompt_rollout_serves_the_canary_version_to_a_sticky_share(rollout_gateway: GatewayProcess) -> None:
    proc = rollout_gateway
    for marker in ("one", "two"):
        (proc.config.root / "greet.yaml").write_text(PROMPT.format(marker=marker))
        proc.cli("prompts", "push", str(proc.config.root / "greet.yaml"), "-m", marker)
    proc.cli("prompts", "label", "set", "greet", "beta", "1")
    apply_rollouts(proc, {"rollouts": {"greet-two": {
        "target": {"prompt": "greet", "label": "beta", "canary": {"version": 2}},
        "steps": [{"weight": 50}, {"weight": 100}],
    }}})
    _, key = new_key(proc.url, ADMIN_KEY, "gamma")

    def greet(client: httpx.Client, request_id: str, user: str, model: str = "prompt:greet@beta") -> httpx.Response:
        response = client.post("/v1/chat/completions", json={"model": model, "user": user},
                               headers={"Authorization": f"Bearer {key}", "x-request-id": request_id})
        assert response.status_code == 200, response.text
        return response

    with httpx.Client(base_url=proc.url, timeout=20) as client:
        wait_until(lambda: "x-gateway-rollout" in greet(client, "probe", "u").headers)
        versions: dict[str, set[tuple[str, str]]] = {}
        for round_ in range(2):
            for i in range(40):
                response = greet(client, f"pr-{round_}-{i}", f"user-{i}")
                variant = response.headers["x-gateway-variant"]
                version = response.headers["x-prompt-version"]
                assert (variant, version) in {("stable", "1"), ("canary", "2")}
                assert response.headers["x-gateway-rollout"] == "greet-two"
                answer = response.json()["choices"][0]["message"]["content"]
                assert f"Greet {'two' if version == '2' else 'one'}" in answer
                versions.setdefault(f"user-{i}", set()).add((variant, version))
        assert all(len(seen) == 1 for seen in versions.values())
        assert {next(iter(seen))[0] for seen in versions.values()} == {"stable", "canary"}
        # Another label, or a pinned version, is not part of the rollout.
        pinned = greet(client, "pinned", "user-1", "prompt:greet@v1")
        assert "x-gateway-rollout" not in pinned.headers and pinned.headers["x-prompt-version"] == "1"

    rows = await wait_for_rows(proc.config.database_url, ledger.c.request_id.like("pr-%"),
                               until=lambda found: len(found) >= 80)
    assert {(row["variant"], row["prompt_version"], row["rollout_id"]) for row in rows} == {
        ("stable", 1, "greet-two"), ("canary", 2, "greet-two")}


def test_operators_pause_and_abort_through_the_cli_and_the_admin_api(rollout_gateway: GatewayProcess) -> None:
    proc = rollout_gateway
    _, alpha = new_key(proc.url, ADMIN_KEY, "alpha")
    _, author = new_key(proc.url, ADMIN_KEY, "alpha", "author")
    apply_rollouts(proc, {"rollouts": {"split-next": {**ROLLOUT["rollouts"]["split-next"], "start": "manual"}}})
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    with httpx.Client(base_url=proc.url, timeout=20) as client:
        def variants() -> Counter[str | None]:
            return Counter(ask(client, alpha, f"v-{time.monotonic_ns()}-{i}", user=f"user-{i}").headers
                           .get("x-gateway-variant") for i in range(40))

        wait_until(lambda: [r["status"] for r in client.get("/admin/rollouts", headers=admin).json()] == ["pending"])
        assert variants() == Counter({None: 40})  # manual: nothing routes until started

        started = proc.cli("rollouts", "start", "split-next", "-m", "go", "--ticket", "OPS-9")
        assert "started split-next: running, step 1 of 3, canary weight 30 %" in started.stdout
        wait_until(lambda: variants()["canary"] > 0)
        assert set(variants()) == {"stable", "canary"}

        denied = client.post("/admin/rollouts/split-next/abort", json={"reason": "x"},
                             headers={"Authorization": f"Bearer {author}"})
        assert denied.status_code == 403 and denied.json()["error"]["code"] == "insufficient_role"
        paused = client.post("/admin/rollouts/split-next/pause", json={"reason": "look at p95"},
                             headers={"Authorization": f"Bearer {author}"})
        assert paused.status_code == 200 and paused.json()["status"] == "paused"
        assert client.post("/admin/rollouts/split-next/pause", headers=admin).status_code == 409

        status = yaml.safe_load(proc.cli("rollouts", "status", "split-next", "--format", "json").stdout)
        assert (status["status"], status["weight"], status["step"]) == ("paused", 30.0, 0)
        table = proc.cli("rollouts", "list").stdout
        assert "split-next" in table and "paused" in table

        aborted = proc.cli("rollouts", "abort", "split-next", "-m", "errors up")
        assert "aborted split-next: aborted" in aborted.stdout
        # This replica applies the change at its next poll (0.5 s): no request gets the canary.
        wait_until(lambda: variants() == Counter({None: 40}), timeout=2.0)
        refused = proc.cli("rollouts", "pause", "split-next", check=False)
        assert refused.returncode == 1 and "aborted (final)" in refused.stderr

    import json

    entries = json.loads(proc.cli("audit", "list", "--target", "rollout:split-next", "--format", "json").stdout)
    assert [e["action"] for e in entries] == ["rollout.start", "rollout.pause", "rollout.abort"]
    assert entries[0]["reason"] == "go" and entries[0]["ticket"] == "OPS-9"
    assert entries[2]["after"]["weight"] == 0 and entries[2]["before"]["status"] == "paused"


FAILURES = {
    # 30 % of the canary's calls fail with a 500, against none of stable's.
    "errors": ({}, {"error_rate": 0.3, "error_status": 500}, {"metric": "error_rate", "max_over_stable": 0.05}, 10),
    # The canary answers three times slower than stable.
    "latency": ({"latency_ms": 40}, {"latency_ms": 120}, {"metric": "p95_ms", "max_ratio_to_stable": 1.5}, 5),
}


@pytest.mark.parametrize("failure", sorted(FAILURES))
def test_a_failing_canary_is_rolled_back_automatically(tmp_path: Path, fake_upstream: FakeHandle, failure: str) -> None:
    import json
    import threading

    from support.budgets import WebhookReceiver

    stable_mock, canary_mock, check, min_requests = FAILURES[failure]
    metric = check["metric"]
    found = models(fake_upstream.url)
    found["aliases"]["split"]["deployments"][0].update(mock=stable_mock)
    found["aliases"]["split"]["deployments"][1].update(retries=0, mock=canary_mock)
    proc = make_gateway(tmp_path, fake_upstream.url, f"sqlite:///{tmp_path / 'gateway.db'}", models=found,
                        teams=TEAMS, extra={"ledger": {"flush_interval_ms": 50}}).start()
    receiver = WebhookReceiver().start()
    stop = threading.Event()
    try:
        _, alpha = new_key(proc.url, ADMIN_KEY, "alpha")
        apply_rollouts(proc, {"rollouts": {"split-next": {
            "target": {"alias": "split", "canary": {"deployment": 1}},
            # Several steps: a window that passes by luck must not promote the canary.
            "steps": [{"weight": w} for w in (50, 60, 70, 80, 100)], "interval_s": 1, "min_requests": min_requests,
            "failure_limit": 2, "checks": [check], "webhook_url": receiver.url,
        }}})
        seen: list[tuple[float, str | None, int]] = []

        def traffic() -> None:
            with httpx.Client(base_url=proc.url, timeout=20) as client:
                i = 0
                while not stop.is_set():
                    response = client.post("/v1/chat/completions", headers={"Authorization": f"Bearer {alpha}"},
                                           json={"model": "split", "user": f"user-{i % 200}",
                                                 "messages": [{"role": "user", "content": "hi"}]})
                    seen.append((time.monotonic(), response.headers.get("x-gateway-variant"), response.status_code))
                    i += 1

        senders = [threading.Thread(target=traffic, daemon=True) for _ in range(3)]
        for sender in senders:
            sender.start()

        def status() -> dict[str, Any]:
            found: dict[str, Any] = httpx.get(f"{proc.url}/admin/rollouts/split-next",
                                              headers={"Authorization": f"Bearer {ADMIN_KEY}"}).json()
            return found

        try:
            wait_until(lambda: status().get("status") == "aborted", timeout=15)
        except AssertionError:
            raise AssertionError(f"not rolled back: {json.dumps(status(), indent=1)[-3000:]}") from None
        aborted_at = time.monotonic()
        final = status()
        took = (datetime.fromisoformat(final["updated_at"]) - datetime.fromisoformat(final["started_at"]))
        # interval x failure_limit, plus one interval, plus the loop's tick and the ledger's flush.
        assert took.total_seconds() <= 1 * 2 + 1 + 1.5, final
        metrics = httpx.get(f"{proc.url}/metrics").text
        assert 'gateway_rollout_rollbacks_total{rollout="split-next"} 1.0' in metrics
        assert 'gateway_rollout_status{rollout="split-next",status="aborted"} 1.0' in metrics
        assert 'gateway_rollout_weight_percent{rollout="split-next"} 0.0' in metrics
        assert 'gateway_rollout_checks_total{action="abort",rollout="split-next",verdict="fail"} 1.0' in metrics
        assert 'gateway_rollout_last_check{number="errors",rollout="split-next",variant="canary"}' in metrics
        # Two failed checks in a row (an inconclusive window between them neither counts nor resets).
        verdicts = [entry["verdict"] for entry in final["history"] if entry["verdict"] != "inconclusive"]
        assert verdicts[-2:] == ["fail", "fail"], final["history"]
        time.sleep(1.0)  # every replica's watcher has polled by now
        stop.set()
        for sender in senders:
            sender.join(10)
        late = [variant for at, variant, _ in seen if at > aborted_at + 0.6]
        assert late and set(late) == {None}, "a request got the canary after the rollback"
    finally:
        stop.set()
        proc.stop()
        receiver.stop()

    [hook] = receiver.received
    assert hook["event"] == "rollout.rolled_back" and hook["rollout"] == "split-next" and hook["verdict"] == "fail"
    assert next(c for c in hook["checks"] if c["metric"] == metric)["ok"] is False
    entries = json.loads(proc.cli("audit", "list", "--target", "rollout:split-next", "--format", "json").stdout)
    assert entries[-1]["action"] == "rollout.abort" and entries[-1]["actor_key_id"] == "rollout-controller"
    assert entries[-1]["reason"] == f"automatic rollback: failed: {metric}"
    failed = next(c for c in entries[-1]["after"]["detail"]["analysis"]["checks"] if c["metric"] == metric)
    assert failed["ok"] is False and failed["canary"] > failed["bound"]
    shown = proc.cli("rollouts", "status", "split-next").stdout
    assert "last check's window" in shown and "│ abort " in shown and f"failed: {metric}" in shown
    assert "since the current step began" in shown and f"│ {metric} " in shown and "FAIL" in shown
    shown_json = json.loads(proc.cli("rollouts", "status", "split-next", "--format", "json").stdout)
    assert shown_json["last_check"]["verdict"] == "fail" and shown_json["last_check"]["action"] == "abort"
    assert {c["metric"]: c["ok"] for c in shown_json["last_check"]["checks"]} == {metric: False}
    live = shown_json["live"]  # the whole step's numbers per variant, from the ledger
    assert set(live) == {"stable", "canary"} and live["canary"]["requests"] > 0
    assert {"requests", "errors", "p95_ms", "cost_per_request"} <= set(live["canary"])
    log_lines = [line for line in proc.log().splitlines() if "rollout rolled back" in line]
    assert len(log_lines) == 1


def test_a_healthy_prompt_canary_advances_through_every_step_and_its_label_moves(
    tmp_path: Path, fake_upstream: FakeHandle
) -> None:
    import json
    import threading

    proc = make_gateway(tmp_path, fake_upstream.url, f"sqlite:///{tmp_path / 'gateway.db'}",
                        models=models(fake_upstream.url), teams=TEAMS,
                        extra={"ledger": {"flush_interval_ms": 50}}).start()
    stop = threading.Event()
    try:
        for marker in ("one", "two"):
            (proc.config.root / "greet.yaml").write_text(PROMPT.format(marker=marker))
            proc.cli("prompts", "push", str(proc.config.root / "greet.yaml"), "-m", marker)
        proc.cli("prompts", "label", "set", "greet", "beta", "1")
        _, key = new_key(proc.url, ADMIN_KEY, "gamma")
        apply_rollouts(proc, {"rollouts": {"greet-two": {
            "target": {"prompt": "greet", "label": "beta", "canary": {"version": 2}},
            "steps": [{"weight": 20}, {"weight": 50}, {"weight": 100}],
            "interval_s": 0.7, "min_requests": 5, "failure_limit": 2,
            "checks": [{"metric": "error_rate", "max_over_stable": 0.05}, {"metric": "p95_ms", "max": 5000}],
        }}})

        def traffic() -> None:
            with httpx.Client(base_url=proc.url, timeout=20) as client:
                i = 0
                while not stop.is_set():
                    client.post("/v1/chat/completions", headers={"Authorization": f"Bearer {key}"},
                                json={"model": "prompt:greet@beta", "user": f"user-{i % 300}"})
                    i += 1

        sender = threading.Thread(target=traffic, daemon=True)
        sender.start()

        def state() -> dict[str, Any]:
            found: dict[str, Any] = httpx.get(f"{proc.url}/admin/rollouts/greet-two",
                                              headers={"Authorization": f"Bearer {ADMIN_KEY}"}).json()
            return found

        wait_until(lambda: state().get("status") == "promoted", timeout=30)
        stop.set()
        sender.join(10)
        final = state()
        assert [(e["step"], e["action"]) for e in final["history"] if e["action"] != "record"] == [
            (0, "advance"), (1, "advance"), (2, "promote")]
        labels = json.loads(proc.cli("prompts", "show", "greet@beta", "--format", "json").stdout)
        assert labels["version"] == 2
        entries = json.loads(proc.cli("audit", "list", "--format", "json").stdout)
        targets = ("rollout:greet-two", "prompt:greet@beta")
        moves = [(e["action"], e["target"]) for e in entries if e["target"] in targets]
        assert moves == [("prompt.label", "prompt:greet@beta"), ("rollout.advance", "rollout:greet-two"),
                         ("rollout.advance", "rollout:greet-two"), ("prompt.label", "prompt:greet@beta"),
                         ("rollout.promote", "rollout:greet-two")]
        promoted = next(e for e in entries if e["action"] == "rollout.promote")
        assert promoted["actor_key_id"] == "rollout-controller" and promoted["after"]["weight"] == 100
    finally:
        stop.set()
        proc.stop()


@pytest.mark.redis
@pytest.mark.postgres
def test_the_lease_holder_is_killed_mid_rollout_and_another_replica_carries_on(
    tmp_path: Path, fake_upstream: FakeHandle, fresh_pg_url: str, redis_url: str
) -> None:
    """Two replicas on one Redis and PostgreSQL; one holds the controller lease (in Redis) and
    alone runs the analysis. It is SIGKILLed mid-rollout: the other takes the lease within two
    lease periods and carries on from the stored step, no step repeated or skipped."""
    import json
    import threading

    lease_s = 2.0
    config: dict[str, Any] = {"models": models(fake_upstream.url), "teams": TEAMS, "redis_url": redis_url,
                              "extra": {"ledger": {"flush_interval_ms": 50},
                                        "rollouts": {"lease_s": lease_s, "poll_interval_s": 0.25}}}
    first = make_gateway(tmp_path / "a", fake_upstream.url, fresh_pg_url, **config).start()
    second = make_gateway(tmp_path / "b", fake_upstream.url, fresh_pg_url, **config).start()
    replicas = {f"{proc.proc.pid}": proc for proc in (first, second) if proc.proc is not None}
    stop = threading.Event()
    try:
        _, alpha = new_key(first.url, ADMIN_KEY, "alpha")
        steps = [{"weight": w} for w in (20, 30, 40, 50, 60, 70, 80, 90, 95, 100)]
        apply_rollouts(first, {"rollouts": {"split-next": {
            "target": {"alias": "split", "canary": {"deployment": 1}}, "steps": steps,
            "interval_s": 1, "min_requests": 2, "failure_limit": 2,
            "checks": [{"metric": "error_rate", "max_over_stable": 0.05}],
        }}})
        alive = [first, second]

        def traffic() -> None:
            i = 0
            while not stop.is_set():
                target = alive[i % len(alive)]
                with contextlib.suppress(httpx.HTTPError):
                    httpx.post(f"{target.url}/v1/chat/completions", headers={"Authorization": f"Bearer {alpha}"},
                               json={"model": "split", "user": f"user-{i % 300}",
                                     "messages": [{"role": "user", "content": "hi"}]}, timeout=5)
                i += 1

        senders = [threading.Thread(target=traffic, daemon=True) for _ in range(2)]
        for sender in senders:
            sender.start()

        def state(proc: GatewayProcess) -> dict[str, Any]:
            found: dict[str, Any] = httpx.get(f"{proc.url}/admin/rollouts/split-next",
                                              headers={"Authorization": f"Bearer {ADMIN_KEY}"}).json()
            return found

        def leaders() -> list[dict[str, Any]]:
            found: list[dict[str, Any]] = json.loads(first.cli(
                "audit", "list", "--target", "rollouts:controller", "--format", "json").stdout)
            return found

        def leading(proc: GatewayProcess) -> bool:
            return "gateway_rollout_controller_leading 1.0" in httpx.get(f"{proc.url}/metrics").text

        wait_until(lambda: state(second).get("step", 0) >= 2, timeout=60)
        holder = first if leading(first) else second
        survivor = second if holder is first else first
        assert leading(holder) and not leading(survivor)
        alive.remove(holder)
        holder.kill()
        killed_at = datetime.now(UTC)
        at_kill = state(survivor)
        assert at_kill["status"] == "running", "the rollout ended before the kill: the test shows nothing"
        wait_until(lambda: state(survivor).get("status") == "promoted", timeout=60)
        stop.set()
        for sender in senders:
            sender.join(10)
        final = state(survivor)
        taken = leaders()
        # The promotion made the canary deployment the alias' own: every caller gets it now
        # (a team the rollout never matched too), outside any rollout.
        _, beta = new_key(survivor.url, ADMIN_KEY, "beta")

        def answered() -> tuple[str, str | None]:
            response = httpx.post(f"{survivor.url}/v1/chat/completions", headers={"Authorization": f"Bearer {beta}"},
                                  json={"model": "split", "messages": [{"role": "user", "content": "hi"}]})
            return response.json()["model"], response.headers.get("x-gateway-variant")

        wait_until(lambda: answered() == ("mock-next", None))
        applied = json.loads(survivor.cli("audit", "list", "--target", "policies", "--format", "json").stdout)
    finally:
        stop.set()
        first.stop()
        second.stop()

    # The survivor took the lease (a new generation) within two lease periods (plus its poll).
    leader = [entry for entry in taken if datetime.fromisoformat(entry["ts"]) < killed_at][-1]
    assert replicas[leader["after"]["holder"].rsplit(":", 1)[1]] is holder
    generation = leader["after"]["generation"]
    assert [entry["after"]["generation"] for entry in taken] == list(range(1, generation + 2))
    took_at = datetime.fromisoformat(taken[-1]["ts"])
    assert taken[-1]["after"]["holder"].endswith(f":{survivor.proc.pid if survivor.proc else ''}")
    assert 0 < (took_at - killed_at).total_seconds() <= 2 * lease_s + 0.25
    # Every check was made by the holder of its time, and no step was repeated or skipped.
    decisions = [(e["step"], e["action"]) for e in final["history"] if e["action"] != "record"]
    assert decisions == [*((step, "advance") for step in range(9)), (9, "promote")]
    by_generation = {(e["by"], e["generation"]) for e in final["history"]}
    assert by_generation <= {(t["after"]["holder"], t["after"]["generation"]) for t in taken}
    after_kill = {e["generation"] for e in final["history"] if datetime.fromisoformat(e["at"]) > killed_at}
    assert after_kill == {generation + 1}
    entries = json.loads(survivor.cli("audit", "list", "--target", "rollout:split-next", "--format", "json").stdout)
    assert [e["action"] for e in entries] == ["rollout.advance"] * 9 + ["rollout.promote"]
    assert [e["after"]["step"] for e in entries[:9]] == [1, 2, 3, 4, 5, 6, 7, 8, 9]
    assert entries[-1]["after"]["detail"]["policy_version"] == 2
    assert [(e["action"], e["actor_key_id"], e["after"]["version"]) for e in applied][-1] == (
        "policy.apply", "rollout-controller", 2)
    assert "weight: 0" in applied[-1]["after"]["diff"]


def test_the_cache_keeps_the_variants_apart(tmp_path: Path, fake_upstream: FakeHandle) -> None:
    from gateway.routing import uniform

    teams = {"teams": {"alpha": {"cache": {"enabled": True, "cache_nondeterministic": True}}}}
    proc = make_gateway(tmp_path, fake_upstream.url, f"sqlite:///{tmp_path / 'gateway.db'}",
                        models=models(fake_upstream.url), teams=teams).start()
    try:
        _, alpha = new_key(proc.url, ADMIN_KEY, "alpha")
        apply_rollouts(proc, ROLLOUT)
        users = [f"user-{i}" for i in range(100)]
        canary = [u for u in users if uniform("split-next", "u:" + u) < 0.3][:2]
        stable = [u for u in users if uniform("split-next", "u:" + u) >= 0.3][:2]
        with httpx.Client(base_url=proc.url, timeout=20) as client:
            wait_until(lambda: "x-gateway-variant" in ask(client, alpha, "probe", user="probe", content="?").headers)
            asked = [(user, ask(client, alpha, f"c-{user}", user=user)) for user in [stable[0], canary[0],
                                                                                     stable[1], canary[1]]]
    finally:
        proc.stop()
    # The first of each variant fills its own entry; the second of each is served from it.
    seen = [(r.headers["x-gateway-variant"], r.headers["x-cache"], r.json()["model"]) for _, r in asked]
    assert seen == [("stable", "MISS", "mock-stable"), ("canary", "MISS", "mock-next"),
                    ("stable", "HIT", "mock-stable"), ("canary", "HIT", "mock-next")]
