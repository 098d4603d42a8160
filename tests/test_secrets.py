"""No configured secret leaves the gateway: not in an error body, an SSE error event or a log line.

Upstreams echo credentials in their errors ("Incorrect API key provided: ..."). The gateway
once scrubbed only keys shaped like ``sk-…``, so a 32-hex-character key came back verbatim
in 400/404/429/502 bodies and in the log, and upstream error events in the middle of a
stream were relayed untouched even for ``sk-`` keys. Each provider path is tried here with
both kinds of key, the fake upstream echoing whatever key it was sent.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import FakeHandle

from gateway.redact import MIN_SECRET_CHARS, REDACTED, Scrubber
from support.gateway_proc import ADMIN_KEY, GatewayConfig, GatewayProcess, default_models

HEX_KEY = secrets.token_hex(16)  # 32 hex characters: shaped like no known key
SK_KEY = "sk-proj-" + secrets.token_urlsafe(24)


def test_the_scrubber_replaces_exact_values_and_key_shapes() -> None:
    scrubber = Scrubber()
    scrubber.use("catalog", [HEX_KEY, "short"])
    scrubber.use("settings", ["admin-key-0123456789"])
    text = f"bad key {HEX_KEY}; admin admin-key-0123456789; other sk-abcdefgh123; short stays"
    assert scrubber.scrub(text) == f"bad key {REDACTED}; admin {REDACTED}; other {REDACTED}; short stays"
    scrubber.use("catalog", [])  # a policy change drops a key: it is no longer known by value
    assert HEX_KEY in scrubber.scrub(HEX_KEY)
    assert len("short") < MIN_SECRET_CHARS


@pytest.fixture(scope="module", params=[HEX_KEY, SK_KEY], ids=["hex-key", "sk-key"])
def leaky(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
          fake_upstream: FakeHandle) -> Iterator[tuple[GatewayProcess, str, str]]:
    """A gateway whose provider key is ``request.param``; (gateway, app key, provider key)."""
    provider_key: str = request.param
    root: Path = tmp_path_factory.mktemp("secrets")
    models = default_models(fake_upstream.url)
    models["aliases"]["claude"] = {"deployments": [{
        "provider": "anthropic", "model": "claude-haiku-4-5", "base_url": fake_upstream.url,
        "api_key": "${TEST_PROVIDER_KEY}", "timeout_s": 10, "retries": 0}]}
    proc = GatewayProcess(
        GatewayConfig(root=root, upstream=fake_upstream.url, database_url=f"sqlite:///{root / 'g.db'}",
                      models=models),
        env={"TEST_PROVIDER_KEY": provider_key},
    ).start()
    yield proc, proc.create_key("alpha"), provider_key
    proc.stop()


def chat(gateway: GatewayProcess, key: str, model: str, **extra: Any) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], **extra}
    return httpx.post(f"{gateway.url}/v1/chat/completions", json=body,
                      headers={"authorization": f"Bearer {key}"}, timeout=30)


@pytest.mark.parametrize("model", ["fake-chat", "claude"])
@pytest.mark.parametrize(("upstream_status", "status"), [(400, 400), (404, 404), (429, 429), (500, 502)])
@pytest.mark.parametrize("stream", [False, True])
def test_an_upstream_error_echoing_the_key_is_scrubbed(
    leaky: tuple[GatewayProcess, str, str], fake: FakeHandle, model: str, upstream_status: int, status: int,
    stream: bool,
) -> None:
    gateway, key, provider_key = leaky
    fake.faults({"status": upstream_status, "echo_key": True})
    response = chat(gateway, key, model, stream=stream)
    assert response.status_code == status, response.text
    assert provider_key not in response.text
    assert response.json()["error"]["message"]  # the upstream's message, scrubbed, not dropped
    assert fake.stats()["last_request"] is not None


def test_an_upstream_error_event_mid_stream_is_scrubbed(leaky: tuple[GatewayProcess, str, str],
                                                        fake: FakeHandle) -> None:
    gateway, key, provider_key = leaky
    fake.faults({"error_after_chunks": 2, "echo_key": True})
    response = chat(gateway, key, "fake-chat", stream=True)
    assert response.status_code == 200
    assert '"error"' in response.text and REDACTED in response.text
    assert provider_key not in response.text
    # One closing error event (the upstream's failure, scrubbed), not the upstream's own event
    # followed by the gateway's "ended without [DONE]".
    events = [line for line in response.text.split("\n\n") if line.startswith("data: {")]
    errors = [json.loads(event[6:])["error"] for event in events if '"error"' in event]
    assert len(errors) == 1 and errors[0]["code"] == "upstream_stream_error"
    assert '"error"' in events[-1] and "[DONE]" not in response.text  # it ends the stream


def test_the_log_never_holds_a_configured_secret(leaky: tuple[GatewayProcess, str, str], fake: FakeHandle) -> None:
    gateway, key, provider_key = leaky
    fake.faults({"status": 500, "echo_key": True, "times": 3})
    chat(gateway, key, "fake-chat")
    chat(gateway, key, "claude")
    log = gateway.log()
    assert "upstream" in log  # the failures were logged, scrubbed
    assert provider_key not in log and ADMIN_KEY not in log
