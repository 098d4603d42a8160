"""The response cache through the real server, with real clients, on both backends.

Every test runs against a gateway with Redis and one with the embedded in-process store:
the semantics must be the same. Each test asks questions no other test asks, so the shared
stores need no flushing between tests; upstream calls are counted by the fake upstream.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import redis
from typer.testing import CliRunner

from gateway.cli import app as cli_app
from support.cache import (
    ADMIN,
    chat_body,
    content_of,
    create_key,
    post_chat,
    start_gateway,
    unique_question,
    wait_for,
)
from support.gateway_proc import ADMIN_KEY, GatewayProcess


@pytest.fixture(scope="module", params=["redis", "memory"])
def cached(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, fake_upstream: Any
) -> Iterator[tuple[GatewayProcess, dict[str, str]]]:
    """A gateway with the cache teams, and an app key per team."""
    redis_url = ""
    if request.param == "redis":
        redis_url = request.getfixturevalue("redis_url")
        redis.Redis.from_url(redis_url).flushdb()
    root = tmp_path_factory.mktemp(f"cache-{request.param}")
    # A generous Redis deadline: these tests are about cache semantics, and a loaded CI machine
    # must not make them fail open (test_cache_replicas.py covers the default deadline).
    gateway = start_gateway(root, fake_upstream.url, redis_url=redis_url, redis={"op_timeout_ms": 1000})
    keys = {team: create_key(gateway.url, team) for team in
            ("alpha", "beta", "gamma", "delta", "plain", "tiny", "sampler", "brief", "broke", "payer")}
    yield gateway, keys
    gateway.stop()


def upstream_calls(fake: Any) -> int:
    return int(fake.stats()["by_path"].get("/v1/chat/completions", 0))


def test_a_repeat_is_a_hit_with_age_and_the_same_answer(cached: Any, fake: Any) -> None:
    gateway, keys = cached
    body = chat_body(unique_question())
    first = post_chat(gateway.url, keys["alpha"], body)
    second = post_chat(gateway.url, keys["alpha"], body)
    assert first.status_code == second.status_code == 200
    assert first.headers["x-cache"] == "MISS" and "age" not in first.headers
    assert second.headers["x-cache"] == "HIT" and second.headers["age"] == "0"
    assert second.content == first.content
    assert upstream_calls(fake) == 1


def test_key_order_whitespace_user_and_metadata_share_an_entry(cached: Any, fake: Any) -> None:
    gateway, keys = cached
    question = unique_question()
    post_chat(gateway.url, keys["alpha"], chat_body(question, max_tokens=50, user="ann"))
    raw = (
        b'{ "max_tokens" : 50,\n  "temperature": 0, "metadata": {"trace": "x"}, "user": "bob",\n'
        b'  "messages": [ {"content": "' + question.encode() + b'", "role": "user"} ], "model": "fake-chat" }'
    )
    response = httpx.post(
        f"{gateway.url}/v1/chat/completions", content=raw,
        headers={"Authorization": f"Bearer {keys['alpha']}", "Content-Type": "application/json"},
    )
    assert response.headers["x-cache"] == "HIT"
    changed = post_chat(gateway.url, keys["alpha"], chat_body(question, max_tokens=51))
    seeded = post_chat(gateway.url, keys["alpha"], chat_body(question, max_tokens=50, seed=7))
    assert changed.headers["x-cache"] == seeded.headers["x-cache"] == "MISS"
    assert upstream_calls(fake) == 3


def test_teams_never_see_each_others_entries(cached: Any, fake: Any) -> None:
    gateway, keys = cached
    body = chat_body(unique_question())
    assert post_chat(gateway.url, keys["alpha"], body).headers["x-cache"] == "MISS"
    assert post_chat(gateway.url, keys["alpha"], body).headers["x-cache"] == "HIT"
    beta = post_chat(gateway.url, keys["beta"], body)
    assert beta.status_code == 200 and beta.headers["x-cache"] == "MISS"
    assert post_chat(gateway.url, keys["beta"], body).headers["x-cache"] == "HIT"
    assert upstream_calls(fake) == 2


def test_a_policy_shares_a_scope_between_named_teams_only(cached: Any, fake: Any) -> None:
    gateway, keys = cached
    body = chat_body(unique_question())
    assert post_chat(gateway.url, keys["gamma"], body).headers["x-cache"] == "MISS"
    assert post_chat(gateway.url, keys["delta"], body).headers["x-cache"] == "HIT"
    assert post_chat(gateway.url, keys["alpha"], body).headers["x-cache"] == "MISS"
    assert upstream_calls(fake) == 2


def test_policy_switches(cached: Any, fake: Any) -> None:
    gateway, keys = cached
    body = chat_body(unique_question())
    # A team without a cache policy, and an alias a team's override turns off.
    for key, model in ((keys["plain"], "fake-chat"), (keys["alpha"], "fake-retry")):
        for _ in range(2):
            response = post_chat(gateway.url, key, {**body, "model": model})
            assert response.status_code == 200 and response.headers["x-cache"] == "BYPASS"
    # Sampling requests are not cached unless the policy says so.
    sampled = chat_body(unique_question(), temperature=0.8)
    for _ in range(2):
        assert post_chat(gateway.url, keys["alpha"], sampled).headers["x-cache"] == "BYPASS"
    unset = {**sampled}
    del unset["temperature"]  # OpenAI's default temperature is 1
    assert post_chat(gateway.url, keys["alpha"], unset).headers["x-cache"] == "BYPASS"
    assert post_chat(gateway.url, keys["sampler"], sampled).headers["x-cache"] == "MISS"
    assert post_chat(gateway.url, keys["sampler"], sampled).headers["x-cache"] == "HIT"
    assert upstream_calls(fake) == 8


def test_cache_control_request_directives(cached: Any, fake: Any) -> None:
    gateway, keys = cached
    url, key = gateway.url, keys["alpha"]
    body = chat_body(unique_question())
    # no-store: neither read nor write.
    assert post_chat(url, key, body, **{"Cache-Control": "no-store"}).headers["x-cache"] == "BYPASS"
    assert post_chat(url, key, body).headers["x-cache"] == "MISS"
    assert post_chat(url, key, body, **{"Cache-Control": "no-store"}).headers["x-cache"] == "BYPASS"
    # no-cache: skip the lookup, refresh the entry.
    refreshed = post_chat(url, key, body, **{"Cache-Control": "no-cache"})
    assert refreshed.headers["x-cache"] == "MISS"
    # max-age: an entry older than N seconds does not count (and gets refreshed).
    assert post_chat(url, key, body, **{"Cache-Control": "max-age=3600"}).headers["x-cache"] == "HIT"
    assert post_chat(url, key, body, **{"Cache-Control": "max-age=0"}).headers["x-cache"] == "MISS"
    assert post_chat(url, key, body).headers["x-cache"] == "HIT"
    assert upstream_calls(fake) == 5


def test_answers_over_the_size_limit_are_not_stored(cached: Any, fake: Any) -> None:
    gateway, keys = cached
    body = chat_body(unique_question())  # the answer is ~380 bytes; the tiny team's limit is 200
    for _ in range(2):
        assert post_chat(gateway.url, keys["tiny"], body).headers["x-cache"] == "MISS"
    streamed = {**body, "stream": True}
    for _ in range(2):
        response = post_chat(gateway.url, keys["tiny"], streamed)
        assert response.headers["x-cache"] == "MISS" and response.text.endswith("data: [DONE]\n\n")
    assert upstream_calls(fake) == 4


def test_entries_expire_after_their_ttl(cached: Any, fake: Any) -> None:
    gateway, keys = cached
    short = chat_body(unique_question())  # the brief team's TTL is 1 s
    long = {**chat_body(unique_question()), "model": "mock"}  # ... but 60 s on the mock alias
    for body in (short, long):
        assert post_chat(gateway.url, keys["brief"], body).headers["x-cache"] == "MISS"
        assert post_chat(gateway.url, keys["brief"], body).headers["x-cache"] == "HIT"
    time.sleep(1.2)
    assert post_chat(gateway.url, keys["brief"], short).headers["x-cache"] == "MISS"
    kept = post_chat(gateway.url, keys["brief"], long)
    assert kept.headers["x-cache"] == "HIT" and int(kept.headers["age"]) >= 1
    assert upstream_calls(fake) == 2  # the mock alias answers in-process


def _sdk(url: str, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0)


def test_streamed_miss_streamed_hit_and_json_hit_agree(cached: Any, fake: Any) -> None:
    gateway, keys = cached
    client = _sdk(gateway.url, keys["beta"])
    question = unique_question()
    messages = [{"role": "user", "content": question}]

    raw = client.chat.completions.with_raw_response.create(
        model="fake-chat", messages=messages, temperature=0, stream=True  # type: ignore[arg-type]
    )
    assert raw.headers["x-cache"] == "MISS"
    missed = "".join(chunk.choices[0].delta.content or "" for chunk in raw.parse() if chunk.choices)
    assert question in missed

    raw = client.chat.completions.with_raw_response.create(
        model="fake-chat", messages=messages, temperature=0, stream=True,  # type: ignore[arg-type]
        stream_options={"include_usage": True},
    )
    assert raw.headers["x-cache"] == "HIT"
    chunks = list(raw.parse())
    assert chunks[-1].choices == [] and chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
    assert {chunk.id for chunk in chunks} == {chunks[0].id}
    replayed = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"

    raw_json = client.chat.completions.with_raw_response.create(
        model="fake-chat", messages=messages, temperature=0  # type: ignore[arg-type]
    )
    assert raw_json.headers["x-cache"] == "HIT"
    completion = raw_json.parse()
    assert missed == replayed == completion.choices[0].message.content
    assert completion.usage is not None and completion.usage.prompt_tokens > 0
    assert upstream_calls(fake) == 1


def test_a_json_answer_replays_as_a_stream(cached: Any, fake: Any) -> None:
    gateway, keys = cached
    client = _sdk(gateway.url, keys["alpha"])
    messages = [{"role": "user", "content": unique_question()}]
    tools = [{"type": "function", "function": {"name": "colour", "parameters": {
        "type": "object", "properties": {"thing": {"type": "string"}}, "required": ["thing"]}}}]
    whole = client.chat.completions.create(
        model="fake-chat", messages=messages, seed=3, tools=tools, n=2  # type: ignore[arg-type]
    )
    stream = client.chat.completions.create(
        model="fake-chat", messages=messages, seed=3, tools=tools, n=2, stream=True  # type: ignore[arg-type]
    )
    calls: dict[int, dict[str, str]] = {}
    for chunk in stream:
        for choice in chunk.choices:
            for call in choice.delta.tool_calls or []:
                slot = calls.setdefault(choice.index, {"name": "", "arguments": ""})
                assert call.function is not None
                slot["name"] += call.function.name or ""
                slot["arguments"] += call.function.arguments or ""
    expected = {
        choice.index: {"name": call.function.name, "arguments": call.function.arguments}  # type: ignore[union-attr]
        for choice in whole.choices for call in choice.message.tool_calls or []
    }
    assert calls == expected and len(expected) == 2
    assert upstream_calls(fake) == 1


def test_failed_and_cut_answers_are_never_stored(cached: Any, fake: Any) -> None:
    gateway, keys = cached
    body = chat_body(unique_question())
    fake.faults({"status": 500, "path": "/chat/completions"})
    assert post_chat(gateway.url, keys["alpha"], body).status_code == 502
    assert post_chat(gateway.url, keys["alpha"], body).headers["x-cache"] == "MISS"
    assert post_chat(gateway.url, keys["alpha"], body).headers["x-cache"] == "HIT"

    streamed = {**chat_body(unique_question()), "stream": True}
    fake.faults({"disconnect_after_chunks": 3, "path": "/chat/completions"})
    cut = post_chat(gateway.url, keys["alpha"], streamed)
    assert '"error"' in cut.text  # the caller was told in-band
    again = post_chat(gateway.url, keys["alpha"], streamed)
    assert again.headers["x-cache"] == "MISS" and again.text.endswith("data: [DONE]\n\n")
    assert post_chat(gateway.url, keys["alpha"], streamed).headers["x-cache"] == "HIT"
    assert upstream_calls(fake) == 4


def test_embeddings_are_cached(cached: Any, fake: Any) -> None:
    gateway, keys = cached
    body = {"model": "fake-embed", "input": [unique_question()]}
    headers = {"Authorization": f"Bearer {keys['alpha']}"}
    first = httpx.post(f"{gateway.url}/v1/embeddings", json=body, headers=headers)
    second = httpx.post(f"{gateway.url}/v1/embeddings", json=body, headers=headers)
    assert (first.headers["x-cache"], second.headers["x-cache"]) == ("MISS", "HIT")
    assert first.json()["data"] == second.json()["data"]
    assert fake.stats()["by_path"].get("/v1/embeddings") == 1


async def test_fifty_concurrent_identical_requests_make_one_upstream_call(cached: Any, fake: Any) -> None:
    gateway, keys = cached
    fake.configure(latency_ms=300)  # the first call is still running when the others arrive
    body = chat_body(unique_question())
    headers = {"Authorization": f"Bearer {keys['beta']}"}
    async with httpx.AsyncClient(base_url=gateway.url, timeout=30, limits=httpx.Limits(max_connections=60)) as c:
        responses = await asyncio.gather(*(
            c.post("/v1/chat/completions", json={**body, "stream": n % 5 == 0}, headers=headers) for n in range(50)
        ))
    assert [r.status_code for r in responses] == [200] * 50
    assert upstream_calls(fake) == 1
    statuses = sorted(r.headers["x-cache"] for r in responses)
    assert statuses == ["HIT"] * 49 + ["MISS"]
    contents = {content_of(r) for r in responses if not r.text.startswith("data:")}
    streamed = [r.text for r in responses if r.text.startswith("data:")]
    assert len(contents) == 1 and len(streamed) == 10
    assert all(s.endswith("data: [DONE]\n\n") for s in streamed)


def cache_cli(gateway: GatewayProcess, *args: str) -> Any:
    """``gateway cache ...`` in-process (the CLI's start-up is seconds; its code path is the same)."""
    result = CliRunner().invoke(cli_app, ["cache", *args, "--config", str(gateway.config_path)])
    return result


def test_purge_through_the_cli_and_the_admin_api(cached: Any, fake: Any) -> None:
    gateway, keys = cached
    question = unique_question()
    requests = {
        "alpha-chat": (keys["alpha"], chat_body(question)),
        "alpha-mock": (keys["alpha"], {**chat_body(question), "model": "mock"}),
        "beta-chat": (keys["beta"], chat_body(question)),
        "gamma-chat": (keys["gamma"], chat_body(question)),
    }

    def status_of(name: str) -> str:
        key, body = requests[name]
        return post_chat(gateway.url, key, body).headers["x-cache"]

    def fill() -> None:
        for name in requests:
            status_of(name)
        assert all(status_of(name) == "HIT" for name in requests)

    fill()
    result = cache_cli(gateway, "purge", "--team", "alpha", "--alias", "fake-chat", "--url", gateway.url,
                       "--key", ADMIN_KEY)
    assert result.exit_code == 0 and "Purged" in result.output, result.output
    assert [status_of(name) for name in requests] == ["MISS", "HIT", "HIT", "HIT"]

    fill()
    denied = httpx.post(f"{gateway.url}/admin/cache/purge", json={"all": True},
                        headers={"Authorization": f"Bearer {keys['alpha']}"})
    assert denied.status_code == 403
    assert httpx.post(f"{gateway.url}/admin/cache/purge", json={}, headers=ADMIN).status_code == 400
    response = httpx.post(f"{gateway.url}/admin/cache/purge", json={"team": "delta"}, headers=ADMIN)
    assert response.status_code == 200 and response.json()["scopes"] == ["t.delta", "s.gd"]
    assert response.json()["purged"] >= 1  # gamma's entry lives in the scope delta shares
    assert [status_of(name) for name in requests] == ["HIT", "HIT", "HIT", "MISS"]

    fill()
    bad = cache_cli(gateway, "purge", "--url", gateway.url, "--key", ADMIN_KEY)
    assert bad.exit_code != 0 and "say what to purge" in bad.output
    wrong_key = cache_cli(gateway, "purge", "--all", "--url", gateway.url, "--key", keys["alpha"])
    assert wrong_key.exit_code != 0 and "403" in wrong_key.output
    if gateway.config.redis_url:
        # With Redis the CLI can also purge without a server.
        direct = cache_cli(gateway, "purge", "--alias", "mock", "--direct")
        assert direct.exit_code == 0, direct.output
    else:
        assert cache_cli(gateway, "purge", "--alias", "mock", "--direct").exit_code != 0
        cache_cli(gateway, "purge", "--alias", "mock", "--url", gateway.url, "--key", ADMIN_KEY)
    assert [status_of(name) for name in requests] == ["HIT", "MISS", "HIT", "HIT"]

    stats = cache_cli(gateway, "stats", "--url", gateway.url, "--key", ADMIN_KEY)
    assert stats.exit_code == 0 and '"hit"' in stats.output
    audit = httpx.get(f"{gateway.url}/admin/audit", headers=ADMIN)
    if audit.status_code == 200:
        assert "cache.purge" in audit.text


def test_metrics_count_outcomes_and_savings(cached: Any, fake: Any) -> None:
    gateway, keys = cached
    body = chat_body(unique_question())
    for _ in range(3):
        post_chat(gateway.url, keys["alpha"], body)
    metrics = httpx.get(f"{gateway.url}/metrics").text
    for needle in (
        'gateway_cache_requests_total{result="hit",team="alpha"}',
        'gateway_cache_requests_total{result="miss",team="alpha"}',
        "gateway_cache_stored_bytes_total",
        'gateway_cache_saved_usd_total{team="alpha"}',
    ):
        assert needle in metrics


def test_a_hit_is_a_free_ledger_row_with_the_saved_cost(cached: Any, fake: Any) -> None:
    gateway, keys = cached
    question = unique_question()
    body = chat_body(question)
    miss = post_chat(gateway.url, keys["alpha"], body)
    hit = post_chat(gateway.url, keys["alpha"], body)
    database = Path(gateway.config.root) / "gateway.db"

    def rows() -> list[tuple[Any, ...]]:
        with sqlite3.connect(database) as conn:
            return conn.execute(
                "SELECT request_id, kind, cost_nanos, saved_nanos FROM ledger WHERE request_id IN (?, ?)",
                (miss.headers["x-request-id"], hit.headers["x-request-id"]),
            ).fetchall()

    found = {row[0]: row[1:] for row in wait_for(lambda: len(rows()) == 2 and rows())}
    kind, cost, saved = found[hit.headers["x-request-id"]]
    miss_kind, miss_cost, miss_saved = found[miss.headers["x-request-id"]]
    assert (kind, cost) == ("cache_hit", 0) and saved == miss_cost > 0
    assert (miss_kind, miss_saved) == ("request", 0)


def test_prompt_versions_are_keyed_and_purged_separately(cached: Any, fake: Any) -> None:
    gateway, keys = cached
    name = "greet-" + unique_question().split()[-1].rstrip("?")[:12]
    template = (
        "name: {name}\ntype: chat\nmodel: fake-chat\nparameters: {{temperature: 0}}\n"
        "variables: {{type: object, required: [who], properties: {{who: {{type: string}}}}}}\n"
        "messages:\n  - {{role: user, content: '{greeting} {{{{ who }}}}'}}\n"
    )
    for greeting in ("Say hello to", "Say goodbye to"):
        pushed = httpx.post(f"{gateway.url}/admin/prompts", headers=ADMIN,
                            json={"source": template.format(name=name, greeting=greeting), "message": greeting})
        assert pushed.status_code == 201, pushed.text

    def ask(version: int, who: str = "Ann") -> httpx.Response:
        return post_chat(gateway.url, keys["alpha"], {"model": f"prompt:{name}@v{version}", "variables": {"who": who}})

    assert [ask(1).headers["x-cache"], ask(1).headers["x-cache"]] == ["MISS", "HIT"]
    assert [ask(2).headers["x-cache"], ask(2).headers["x-cache"]] == ["MISS", "HIT"]
    assert "goodbye" in content_of(ask(2)) and "hello" in content_of(ask(1))
    assert ask(1, who="Bob").headers["x-cache"] == "MISS"  # other variables, other messages
    # The rendered messages sent as a plain model call are another entry: the prompt is keyed.
    plain = post_chat(gateway.url, keys["alpha"], {
        "model": "fake-chat", "temperature": 0, "messages": [{"role": "user", "content": "Say hello to Ann"}]})
    assert plain.headers["x-cache"] == "MISS"

    purged = httpx.post(f"{gateway.url}/admin/cache/purge", headers=ADMIN,
                        json={"prompt": name, "prompt_version": 1})
    assert purged.status_code == 200 and purged.json()["purged"] == 2
    assert [ask(1).headers["x-cache"], ask(2).headers["x-cache"]] == ["MISS", "HIT"]
    cli = cache_cli(gateway, "purge", "--prompt", name, "--url", gateway.url, "--key", ADMIN_KEY)
    assert cli.exit_code == 0 and "Purged 2 entries" in cli.output
    assert [ask(1).headers["x-cache"], ask(2).headers["x-cache"]] == ["MISS", "MISS"]
    assert upstream_calls(fake) == 7


def test_a_hit_never_touches_the_budget(cached: Any, fake: Any) -> None:
    gateway, keys = cached
    body = chat_body(unique_question())
    assert post_chat(gateway.url, keys["payer"], body).headers["x-cache"] == "MISS"
    # The broke team may spend nothing, yet the answer another team of its scope paid for is free.
    for stream in (False, True):
        hit = post_chat(gateway.url, keys["broke"], {**body, "stream": stream})
        assert hit.status_code == 200 and hit.headers["x-cache"] == "HIT"
    refused = post_chat(gateway.url, keys["broke"], chat_body(unique_question()))
    assert refused.status_code == 429 and refused.headers["x-cache"] == "MISS"
    assert upstream_calls(fake) == 1


def nested(depth: int) -> Any:
    value: Any = "leaf"
    for _ in range(depth):
        value = {"a": [value]}  # two levels a round
    return value


@pytest.mark.parametrize("depth", [130, 255, 300, 500])
def test_a_deeply_nested_body_is_a_400_naming_the_limit_not_a_500(cached: Any, fake: Any, depth: int) -> None:
    """Bodies nested past the serialiser's limit once parsed, then failed in the cache stage."""
    gateway, keys = cached
    rounds = depth // 2  # written by hand: orjson itself cannot serialise this
    deep = b'{"a":[' * rounds + b'"leaf"' + b"]}" * rounds
    body = orjson_dumps(chat_body(unique_question()))[:-1] + b',"metadata":' + deep + b"}"
    response = httpx.post(f"{gateway.url}/v1/chat/completions", content=body,
                          headers={"Authorization": f"Bearer {keys['beta']}", "content-type": "application/json"},
                          timeout=30)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == "invalid_json" and "128 levels" in error["message"]
    assert post_chat(gateway.url, keys["beta"], chat_body(unique_question())).status_code == 200


def test_nesting_within_the_limit_is_served_and_cached(cached: Any, fake: Any) -> None:
    gateway, keys = cached
    body = {**chat_body(unique_question()), "metadata": {"deep": nested(60)}}
    first = post_chat(gateway.url, keys["beta"], body)
    assert first.status_code == 200, first.text
    assert post_chat(gateway.url, keys["beta"], body).headers["x-cache"] == "HIT"


@pytest.mark.parametrize(("field", "value"), [
    ("n", 18446744073709551615), ("n", 129), ("n", 0), ("max_tokens", 2**31), ("max_completion_tokens", 10**12),
    ("top_logprobs", 21), ("max_tokens", -1), ("n", True),
])
def test_absurd_counts_are_400s_naming_the_field(cached: Any, field: str, value: Any) -> None:
    gateway, keys = cached
    response = post_chat(gateway.url, keys["beta"], {**chat_body(unique_question()), field: value})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == "invalid_value" and error["param"] == field and "integer from" in error["message"]


def orjson_dumps(value: Any) -> bytes:
    import orjson

    return orjson.dumps(value)


def test_cache_cli_acts_as_the_local_operator_without_an_admin_key(
    cached: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Like `gateway prompts`: whoever can run the CLI here may act; no admin key needed."""
    gateway, _ = cached
    monkeypatch.delenv("GATEWAY_ADMIN_KEY", raising=False)  # the config reads ${GATEWAY_ADMIN_KEY}: now empty
    result = cache_cli(gateway, "stats", "--url", gateway.url)
    assert result.exit_code == 0, result.output
    listing = gateway.cli("keys", "list", "--all", "--format", "json").stdout
    one_off = [row for row in json.loads(listing) if row["name"] == "gateway cache (local)"]
    assert one_off and all(row["revoked_at"] for row in one_off)  # revoked straight after
