"""Data classes, fallbacks across aliases, context windows and budget downgrades, end to end:
a real gateway process, the `openai` SDK, the fake upstream failing what it is told to, and the
ledger read back from storage. Every promise is checked on the JSON and the stream path."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
import yaml
from conftest import FakeHandle, make_gateway

from gateway.storage.schema import ledger
from support.gateway_proc import ADMIN_KEY, GatewayProcess
from support.ledger import new_key, wait_for_rows

CLASSES = {
    "classes": ["public", "internal", "confidential", "restricted"],
    "rules": {"restricted": {"require_tags": {"hosting": ["self"]}}},
}
MOCK_PRICE = {"input_cost_per_token": 1e-6, "output_cost_per_token": 2e-6}


def models(upstream: str) -> dict[str, Any]:
    fake = {
        "provider": "openai",
        "base_url": f"{upstream}/v1",
        "api_key": "${TEST_PROVIDER_KEY}",
        "timeout_s": 5,
        "connect_timeout_s": 1,
        "retries": 0,
        "max_data_class": "confidential",
    }
    self_hosted = {"max_data_class": "restricted", "tags": {"hosting": "self", "region": "eu"}}
    return {
        "aliases": {
            # Both deployments may take restricted data; its fallback has one that may and one that may not.
            "secure": {
                "deployments": [
                    {**fake, "model": "gpt-4o-mini", **self_hosted},
                    {**fake, "model": "gpt-4.1-mini", **self_hosted},
                ],
                "fallbacks": ["backup"],
            },
            "backup": {
                "deployments": [
                    {**fake, "model": "gpt-4o", "max_data_class": "internal", "weight": 5},
                    {"provider": "mock", "model": "mock-safe", "weight": 0, **MOCK_PRICE, **self_hosted},
                ]
            },
            # Restricted data may go to its one deployment, never to its fallback.
            "lonely": {"deployments": [{**fake, "model": "gpt-4o-mini", **self_hosted}], "fallbacks": ["open-backup"]},
            "open-backup": {"deployments": [{**fake, "model": "gpt-4o", "max_data_class": "confidential"}]},
            # Nothing here may take restricted data at all.
            "general": {
                "deployments": [{**fake, "model": "gpt-4o-mini", "max_data_class": "internal"}],
                "fallbacks": ["open-backup"],
            },
            # A small first context window, a large second one (gpt-4o's from the price map).
            "window": {
                "deployments": [
                    {**fake, "model": "gpt-4o-mini", "max_input_tokens": 40},
                    {**fake, "model": "gpt-4o", "weight": 0},
                ]
            },
            "tiny": {"deployments": [{**fake, "model": "gpt-4o-mini", "max_input_tokens": 10}]},
            "big": {
                "deployments": [
                    {**fake, "model": "gpt-4o", "input_cost_per_token": 1e-3, "output_cost_per_token": 1e-3}
                ]
            },
            "small": {"deployments": [{**fake, "model": "gpt-4o-mini"}]},
        }
    }


TEAMS = {
    "teams": {
        "alpha": {"data_class": "internal"},
        "thrifty": {
            "budget": {
                "limit_usd": 0.05,
                "period": "daily",
                "hard": False,
                "downgrade": {"at_pct": 50, "from": "big", "to": "small"},
            }
        },
    }
}


@pytest.fixture(scope="module")
def classy(tmp_path_factory: pytest.TempPathFactory, fake_upstream: FakeHandle) -> Iterator[GatewayProcess]:
    root = tmp_path_factory.mktemp("data-classes")
    proc = make_gateway(
        root, fake_upstream.url, f"sqlite:///{root / 'gateway.db'}", models=models(fake_upstream.url), teams=TEAMS
    )
    (root / "policies" / "data_classes.yaml").write_text(yaml.safe_dump(CLASSES))
    proc.start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def keys(classy: GatewayProcess) -> dict[str, str]:
    return {team: new_key(classy.url, ADMIN_KEY, team)[1] for team in ("alpha", "thrifty")}


def client(proc: GatewayProcess, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{proc.url}/v1", api_key=key, max_retries=0)


def ask(
    proc: GatewayProcess,
    key: str,
    model: str,
    *,
    stream: bool,
    request_id: str,
    data_class: str | None = None,
    content: str = "hello",
) -> tuple[dict[str, str], str]:
    """(answer headers, answer text) through the SDK, as JSON or as a stream."""
    headers = {"x-request-id": request_id}
    if data_class is not None:
        headers["x-data-class"] = data_class
    raw = client(proc, key).chat.completions.with_raw_response.create(
        model=model,
        messages=[{"role": "user", "content": content}],
        stream=stream,
        extra_headers=headers,
    )
    if stream:
        text = "".join(chunk.choices[0].delta.content or "" for chunk in raw.parse() if chunk.choices)
    else:
        text = raw.parse().choices[0].message.content or ""
    return dict(raw.headers), text


def row_of(proc: GatewayProcess, request_id: str) -> dict[str, Any]:
    rows = asyncio.run(
        wait_for_rows(proc.config.database_url, ledger.c.request_id == request_id, until=lambda found: bool(found))
    )
    assert len(rows) == 1
    return rows[0]


def calls(fake: FakeHandle) -> dict[str, int]:
    return dict(fake.stats()["by_model"])


STREAMS = pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])


# -- data classes and fallbacks ------------------------------------------------------------------------


@STREAMS
def test_restricted_falls_back_only_to_the_permitted_deployment(
    classy: GatewayProcess, keys: dict[str, str], fake: FakeHandle, stream: bool
) -> None:
    fake.faults({"status": 503, "times": 2})  # both deployments of `secure` fail
    request_id = f"restricted-fallback-{stream}"
    headers, text = ask(classy, keys["alpha"], "secure", stream=stream, request_id=request_id, data_class="restricted")
    assert headers["x-gateway-fallback"] == "backup"
    assert "hello" in text
    # Both permitted primaries were tried; backup's gpt-4o (internal at most) never was, though its
    # weight puts it first: the mock that may take restricted data answered.
    assert calls(fake) == {"gpt-4o-mini": 1, "gpt-4.1-mini": 1}
    row = row_of(classy, request_id)
    assert (row["data_class"], row["alias"], row["served_alias"]) == ("restricted", "secure", "backup")
    assert row["deployment"] == "mock/mock-safe"
    expected = row["prompt_tokens"] * MOCK_PRICE["input_cost_per_token"] + (
        row["completion_tokens"] * MOCK_PRICE["output_cost_per_token"]
    )
    assert row["cost_nanos"] == round(expected * 1e9) and row["cost_nanos"] > 0


@STREAMS
def test_the_team_default_class_falls_back_to_the_first_fallback_deployment(
    classy: GatewayProcess, keys: dict[str, str], fake: FakeHandle, stream: bool
) -> None:
    fake.faults({"status": 503, "times": 2})
    request_id = f"internal-fallback-{stream}"
    headers, _ = ask(classy, keys["alpha"], "secure", stream=stream, request_id=request_id)
    assert headers["x-gateway-fallback"] == "backup"
    assert calls(fake) == {"gpt-4o-mini": 1, "gpt-4.1-mini": 1, "gpt-4o": 1}
    row = row_of(classy, request_id)
    assert (row["data_class"], row["served_alias"], row["model"]) == ("internal", "backup", "gpt-4o")


@STREAMS
def test_restricted_gets_403_when_no_permitted_deployment_is_left(
    classy: GatewayProcess, keys: dict[str, str], fake: FakeHandle, stream: bool
) -> None:
    fake.faults({"status": 503, "times": 1})  # `lonely`'s one deployment fails
    with pytest.raises(openai.PermissionDeniedError) as caught:
        ask(classy, keys["alpha"], "lonely", stream=stream, request_id=f"lonely-{stream}", data_class="restricted")
    error = caught.value.body
    assert isinstance(error, dict)
    assert error["code"] == "data_class_forbidden" and error["data_class"] == "restricted"
    assert "restricted" in error["message"]
    assert calls(fake) == {"gpt-4o-mini": 1}  # its fallback (confidential at most) was never called
    # Nothing permitted at all: refused before any upstream call.
    with pytest.raises(openai.PermissionDeniedError) as caught:
        ask(classy, keys["alpha"], "general", stream=stream, request_id=f"general-{stream}", data_class="restricted")
    assert caught.value.code == "data_class_forbidden"
    assert calls(fake) == {"gpt-4o-mini": 1}
    assert row_of(classy, f"general-{stream}")["data_class"] == "restricted"


def test_a_caller_raises_its_class_but_never_lowers_it(
    classy: GatewayProcess, keys: dict[str, str], fake: FakeHandle
) -> None:
    ask(classy, keys["alpha"], "general", stream=False, request_id="lower", data_class="public")
    assert row_of(classy, "lower")["data_class"] == "internal"  # the team's default stands
    ask(classy, keys["alpha"], "open-backup", stream=False, request_id="raise", data_class="confidential")
    assert row_of(classy, "raise")["data_class"] == "confidential"
    with pytest.raises(openai.BadRequestError) as caught:
        ask(classy, keys["alpha"], "general", stream=False, request_id="unknown", data_class="secret")
    assert caught.value.code == "unknown_data_class"
    assert classy.log().count('"data_class": "confidential"') + classy.log().count('"data_class":"confidential"') >= 1


# -- context windows -----------------------------------------------------------------------------------


@STREAMS
def test_a_prompt_too_long_for_the_first_deployment_is_served_by_the_next(
    classy: GatewayProcess, keys: dict[str, str], fake: FakeHandle, stream: bool
) -> None:
    short_headers, _ = ask(classy, keys["alpha"], "window", stream=stream, request_id=f"short-{stream}")
    assert calls(fake) == {"gpt-4o-mini": 1}
    long_prompt = "please summarise this rather long sentence about nothing in particular " * 5
    ask(classy, keys["alpha"], "window", stream=stream, request_id=f"long-{stream}", content=long_prompt)
    assert calls(fake) == {"gpt-4o-mini": 1, "gpt-4o": 1}  # skipped, not called and failed
    row = row_of(classy, f"long-{stream}")
    assert row["model"] == "gpt-4o" and row["status"] == 200
    assert "x-gateway-fallback" not in short_headers
    with pytest.raises(openai.BadRequestError) as caught:
        ask(classy, keys["alpha"], "tiny", stream=stream, request_id=f"tiny-{stream}", content=long_prompt)
    assert caught.value.code == "context_length_exceeded"
    assert calls(fake) == {"gpt-4o-mini": 1, "gpt-4o": 1}


# -- budget downgrade ----------------------------------------------------------------------------------


@STREAMS
def test_the_downgrade_switches_aliases_at_the_threshold_and_says_so(
    classy: GatewayProcess, keys: dict[str, str], fake: FakeHandle, stream: bool
) -> None:
    # At $0.001 a token, the first answer spends past half of the $0.05 limit (or already had).
    first_headers, _ = ask(
        classy, keys["thrifty"], "big", stream=stream, request_id=f"big-first-{stream}", content="spend " * 20
    )
    first = row_of(classy, f"big-first-{stream}")
    if "x-gateway-downgraded" not in first_headers:
        assert first["alias"] == "big" and first["downgraded_from"] is None and first["cost_nanos"] >= 25_000_000
    # The spend share is re-read at most every half second: the switch follows within it.
    deadline = time.monotonic() + 10
    attempt = 0
    while True:
        attempt += 1
        request_id = f"big-next-{stream}-{attempt}"
        headers, _ = ask(classy, keys["thrifty"], "big", stream=stream, request_id=request_id)
        if "x-gateway-downgraded" in headers or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert headers["x-gateway-downgraded"] == "big->small"
    assert fake.stats()["last_request"]["body"]["model"] == "gpt-4o-mini"
    row = row_of(classy, request_id)
    assert (row["alias"], row["downgraded_from"], row["model"]) == ("small", "big", "gpt-4o-mini")
    # Other aliases are untouched by the rule.
    headers, _ = ask(classy, keys["thrifty"], "small", stream=stream, request_id=f"small-{stream}")
    assert "x-gateway-downgraded" not in headers


def test_policy_files_name_only_known_classes_and_aliases(tmp_path: Path) -> None:
    from gateway.catalog import build_catalog
    from gateway.config.policies import load_policies
    from gateway.config.yamlfile import ConfigError

    policies = tmp_path / "policies"
    policies.mkdir()
    broken = models("http://127.0.0.1:9")
    broken["aliases"]["secure"]["deployments"][0]["max_data_class"] = "top-secret"
    broken["aliases"]["general"]["fallbacks"] = ["nowhere"]
    (policies / "models.yaml").write_text(yaml.safe_dump(broken))
    teams = {
        "teams": {
            "x": {
                "data_class": "classified",
                "budget": {"limit_usd": 1, "downgrade": {"at_pct": 80, "from": "big", "to": "gone"}},
            }
        }
    }
    (policies / "teams.yaml").write_text(yaml.safe_dump(teams))
    (policies / "data_classes.yaml").write_text(yaml.safe_dump(CLASSES))
    with pytest.raises(ConfigError) as caught:
        build_catalog(load_policies(policies))
    text = "\n".join(caught.value.problems)
    for needle in ("'top-secret'", "'nowhere'", "'classified'", "'gone'"):
        assert needle in text


def test_a_prompt_declaring_a_class_raises_its_requests_to_it(
    classy: GatewayProcess, keys: dict[str, str], fake: FakeHandle
) -> None:
    import httpx

    def push(name: str, data_class: str) -> None:
        source = (
            f"name: {name}\nmodel: open-backup\ndata_class: {data_class}\n"
            "messages:\n  - {role: user, content: 'Summarise the case file.'}\n"
        )
        pushed = httpx.post(
            f"{classy.url}/admin/prompts",
            headers={"Authorization": f"Bearer {ADMIN_KEY}"},
            json={"source": source, "message": "classes"},
            timeout=30,
        )
        assert pushed.status_code == 201, pushed.text

    push("case-file", "restricted")
    push("memo", "confidential")
    with pytest.raises(openai.PermissionDeniedError) as caught:
        ask(classy, keys["alpha"], "prompt:case-file@latest", stream=False, request_id="prompt-restricted")
    assert caught.value.code == "data_class_forbidden"
    ask(classy, keys["alpha"], "prompt:memo@latest", stream=False, request_id="prompt-confidential")
    assert row_of(classy, "prompt-confidential")["data_class"] == "confidential"
    assert calls(fake) == {"gpt-4o": 1}
