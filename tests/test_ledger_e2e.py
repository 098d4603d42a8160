"""The ledger through the real server: every kind of request leaves a priced row, and stopping
the gateway gracefully loses none."""

from __future__ import annotations

import asyncio
import signal
import uuid
from pathlib import Path
from typing import Any

import httpx
import openai
import orjson
import pytest
from conftest import FakeHandle, make_gateway
from openai import AsyncOpenAI, OpenAI

from gateway.catalog import build_catalog
from gateway.config.policies import load_policies
from gateway.pricing import Price, to_nanos
from gateway.storage.schema import ledger
from support.gateway_proc import ADMIN_KEY, GatewayProcess
from support.ledger import ledger_rows, new_key, wait_for_rows

MESSAGES = [{"role": "user", "content": "Say something about ledgers."}]


def _price(proc: GatewayProcess, alias: str) -> Price:
    catalog = build_catalog(load_policies(proc.config.root / "policies"))
    return catalog.aliases[alias].deployments[0].price


def _client(proc: GatewayProcess, key: str) -> OpenAI:
    return OpenAI(base_url=f"{proc.url}/v1", api_key=key, max_retries=0, timeout=20)


async def _row_for(proc: GatewayProcess, request_id: str) -> dict[str, Any]:
    rows = await wait_for_rows(proc.config.database_url, ledger.c.request_id == request_id, until=bool)
    assert len(rows) == 1, f"expected one ledger row for {request_id}, got {rows}"
    return rows[0]


def _rid() -> str:
    return "ledger-" + uuid.uuid4().hex


async def test_answered_requests_are_rows_priced_from_upstream_usage(
    gateway: GatewayProcess, team_keys: dict[str, str], fake: FakeHandle
) -> None:
    client = _client(gateway, team_keys["alpha"])
    price = _price(gateway, "fake-chat")

    plain_id = _rid()
    answer = client.chat.completions.create(
        model="fake-chat", messages=MESSAGES, user="ana", extra_headers={"x-request-id": plain_id}  # type: ignore[arg-type]
    )
    stream_id = _rid()
    streamed_usage = None
    with client.chat.completions.create(
        model="fake-chat", messages=MESSAGES, stream=True, stream_options={"include_usage": True},  # type: ignore[arg-type]
        extra_headers={"x-request-id": stream_id},
    ) as stream:
        for chunk in stream:
            if chunk.usage is not None:
                streamed_usage = chunk.usage
    embed_id = _rid()
    embedding = client.embeddings.create(model="fake-embed", input="a ledger", extra_headers={"x-request-id": embed_id})

    assert answer.usage is not None and streamed_usage is not None
    plain = await _row_for(gateway, plain_id)
    assert plain["kind"] == "request" and plain["status"] == 200
    assert (plain["team"], plain["user"], plain["alias"]) == ("alpha", "ana", "fake-chat")
    assert (plain["deployment"], plain["model"]) == ("openai/gpt-4o-mini", "gpt-4o-mini")
    assert plain["key_id"].startswith("key_")
    assert (plain["prompt_tokens"], plain["completion_tokens"]) == (
        answer.usage.prompt_tokens, answer.usage.completion_tokens
    )
    assert plain["cost_nanos"] == to_nanos(price.cost(answer.usage.prompt_tokens, answer.usage.completion_tokens))
    assert plain["cost_nanos"] > 0 and plain["latency_ms"] > 0

    streamed = await _row_for(gateway, stream_id)
    assert streamed["kind"] == "request" and streamed["status"] == 200
    assert (streamed["prompt_tokens"], streamed["completion_tokens"]) == (
        streamed_usage.prompt_tokens, streamed_usage.completion_tokens
    )
    assert streamed["cost_nanos"] == to_nanos(
        price.cost(streamed_usage.prompt_tokens, streamed_usage.completion_tokens)
    )

    embedded = await _row_for(gateway, embed_id)
    embed_price = _price(gateway, "fake-embed")
    assert embedded["alias"] == "fake-embed" and embedded["prompt_tokens"] == embedding.usage.prompt_tokens
    assert embedded["cost_nanos"] == to_nanos(embed_price.cost(embedding.usage.prompt_tokens, 0))


async def test_failed_and_refused_requests_are_rows_and_401s_are_not(
    gateway: GatewayProcess, team_keys: dict[str, str], fake: FakeHandle
) -> None:
    client = _client(gateway, team_keys["alpha"])

    fake.faults({"status": 500})
    upstream_id = _rid()
    with pytest.raises(openai.APIStatusError) as failed:
        client.chat.completions.create(
            model="fake-chat", messages=MESSAGES, extra_headers={"x-request-id": upstream_id}  # type: ignore[arg-type]
        )
    assert failed.value.status_code == 502

    bad_id = _rid()
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(
            model="fake-chat", messages="not a list", extra_headers={"x-request-id": bad_id}  # type: ignore[arg-type]
        )

    anonymous_id = _rid()
    with pytest.raises(openai.AuthenticationError):
        _client(gateway, "gw-not-a-key").chat.completions.create(
            model="fake-chat", messages=MESSAGES, extra_headers={"x-request-id": anonymous_id}  # type: ignore[arg-type]
        )
    # Rows are written in order by one writer: once a later request's row is in, the 401's
    # would be too, had it been recorded.
    marker_id = _rid()
    client.chat.completions.create(model="fake-chat", messages=MESSAGES, extra_headers={"x-request-id": marker_id})  # type: ignore[arg-type]

    upstream = await _row_for(gateway, upstream_id)
    assert upstream["kind"] == "error" and upstream["status"] == 502
    assert upstream["error_code"] == "upstream_status_500" and upstream["deployment"] == "openai/gpt-4o-mini"
    assert upstream["cost_nanos"] == 0 and upstream["prompt_tokens"] == 0

    bad = await _row_for(gateway, bad_id)
    assert bad["kind"] == "error" and bad["status"] == 400 and bad["error_code"] == "invalid_value"
    assert bad["team"] == "alpha" and bad["key_id"] == upstream["key_id"] and bad["cost_nanos"] == 0

    await _row_for(gateway, marker_id)
    assert await ledger_rows(gateway.config.database_url, ledger.c.request_id == anonymous_id) == []


async def test_a_stream_the_client_cuts_is_a_cancelled_row(
    gateway: GatewayProcess, team_keys: dict[str, str], fake: FakeHandle
) -> None:
    fake.configure(chunk_delay_ms=100, stream_chunks=40)
    client = _client(gateway, team_keys["alpha"])
    request_id = _rid()
    stream = client.chat.completions.create(
        model="fake-chat", messages=MESSAGES, stream=True, extra_headers={"x-request-id": request_id}  # type: ignore[arg-type]
    )
    for received, _ in enumerate(stream, 1):
        if received == 3:
            break
    stream.close()  # hang up mid-answer

    row = await _row_for(gateway, request_id)
    assert row["kind"] == "cancelled" and row["status"] == 499
    assert row["alias"] == "fake-chat" and row["deployment"] == "openai/gpt-4o-mini"
    # Whatever the gateway counted for the part that was streamed is priced at the deployment's price.
    price = _price(gateway, "fake-chat")
    assert row["cost_nanos"] == to_nanos(price.cost(row["prompt_tokens"], row["completion_tokens"]))


async def test_a_graceful_stop_loses_no_rows(tmp_path: Path, fake: FakeHandle) -> None:
    # Rows would sit in the queue for a minute: only the shutdown flush can write them.
    database_url = f"sqlite:///{tmp_path / 'gateway.db'}"
    proc = make_gateway(
        tmp_path, fake.url, database_url, extra={"ledger": {"flush_interval_ms": 60_000, "batch_size": 50_000}}
    ).start(timeout=60)
    try:
        _, key = new_key(proc.url, ADMIN_KEY, "alpha")
        fake.configure(latency_ms=150)
        client = AsyncOpenAI(
            base_url=f"{proc.url}/v1", api_key=key, max_retries=0, timeout=30,
            http_client=httpx.AsyncClient(limits=httpx.Limits(max_connections=100)),
        )

        async def call(i: int) -> int:
            try:
                await client.chat.completions.create(
                    model="fake-chat", messages=[{"role": "user", "content": f"question {i}"}]
                )
                return 200
            except openai.APIStatusError as exc:
                return exc.status_code
            except openai.APIConnectionError:
                return 0  # refused once the server stopped accepting: never answered, never a row

        answered_before = [await call(i) for i in range(3)]
        calls = [asyncio.create_task(call(i)) for i in range(3, 200)]
        for _ in range(1500):  # until many requests are in flight (the fake holds each 150 ms)
            if fake.stats()["requests"] >= 50:
                break
            await asyncio.sleep(0.01)
        assert await ledger_rows(database_url) == []  # everything answered so far is still queued
        stopping = asyncio.get_running_loop().run_in_executor(None, proc.stop, signal.SIGTERM, 30.0)
        statuses = answered_before + list(await asyncio.gather(*calls))
        # uvicorn re-raises the signal once its graceful shutdown is done; a kill would be -9.
        assert await stopping in (0, -signal.SIGTERM)
        await client.close()
    finally:
        proc.stop()

    answered = [s for s in statuses if s]
    successes = statuses.count(200)
    assert successes >= 50
    rows = await ledger_rows(database_url)
    assert sum(1 for row in rows if row["status"] == 200) == successes
    assert len(rows) == len(answered)
    assert "ledger rows not written" not in proc.log()


async def test_sigkill_keeps_flushed_rows_and_the_ledger_resumes(tmp_path: Path, fake: FakeHandle) -> None:
    """What a SIGKILL can lose is bounded by the flush interval: rows already flushed survive it.

    The killed process's in-flight requests and its last unflushed rows are gone with it; with
    Redis, the budget feature reconciles their expired reservations into ``reconciled`` rows.
    """
    database_url = f"sqlite:///{tmp_path / 'gateway.db'}"
    proc = make_gateway(tmp_path, fake.url, database_url, extra={"ledger": {"flush_interval_ms": 20}})
    proc.start(timeout=60)
    try:
        _, key = new_key(proc.url, ADMIN_KEY, "alpha")
        client = _client(proc, key)
        for i in range(10):
            client.chat.completions.create(model="fake-chat", messages=[{"role": "user", "content": f"q{i}"}])
        flushed = await wait_for_rows(database_url, until=lambda rows: len(rows) >= 10)
        assert len(flushed) == 10
        fake.configure(chunk_delay_ms=200, stream_chunks=40)
        stream = client.chat.completions.create(model="fake-chat", messages=MESSAGES, stream=True)
        next(iter(stream))
        proc.kill()
        stream.close()
        fake.configure(chunk_delay_ms=0)

        proc.start(timeout=60)  # a loaded CI machine can take a while to restart it
        after_restart = await ledger_rows(database_url)
        assert after_restart[:10] == flushed
        client.chat.completions.create(model="fake-chat", messages=MESSAGES)
        rows = await wait_for_rows(database_url, until=lambda rows: len(rows) > len(after_restart))
        assert rows[-1]["kind"] == "request" and rows[-1]["status"] == 200 and rows[-1]["cost_nanos"] > 0
    finally:
        proc.stop()


async def test_an_upstream_crash_mid_stream_is_counted_though_nothing_was_built(
    tmp_path: Path, fake: FakeHandle
) -> None:
    """No budgets: the gateway builds no tokenizer at start-up. The first stream that reports no
    usage (here the upstream dies mid-answer) builds one in the background, and its ledger row
    waits for the count rather than reading zero."""
    database_url = f"sqlite:///{tmp_path / 'gateway.db'}"
    proc = make_gateway(tmp_path, fake.url, database_url).start(timeout=60)
    try:
        assert "built tokenizer" not in proc.log()
        _, key = new_key(proc.url, ADMIN_KEY, "alpha")
        fake.faults({"disconnect_after_chunks": 3})
        request_id = _rid()
        with httpx.stream(
            "POST", f"{proc.url}/v1/chat/completions", timeout=20,
            headers={"authorization": f"Bearer {key}", "x-request-id": request_id},
            json={"model": "fake-chat", "messages": MESSAGES, "stream": True},
        ) as response:
            assert response.status_code == 200
            received = b"".join(response.iter_bytes())
        assert b'"error"' in received  # the failure is reported in-band
        row = await _row_for(proc, request_id)
    finally:
        proc.stop()

    from gateway.providers.mock_responses import chat_stream_chunks
    from gateway.usage.tokens import TiktokenTokenizer, TokenCounter
    from gateway.wire import CompletionBuilder

    sent = {"model": "gpt-4o-mini", "messages": MESSAGES, "stream": True, "stream_options": {"include_usage": True}}
    chunks = chat_stream_chunks(sent, chunks=8)[:3]  # what the upstream sent before it died
    o200k = TiktokenTokenizer(TokenCounter().encoding("o200k_base"))
    relayed = CompletionBuilder()
    relayed.add_parts([b"data: " + orjson.dumps(chunk) + b"\n\n" for chunk in chunks])
    completion = o200k.count_text("".join(relayed.texts))
    assert completion > 0
    assert (row["kind"], row["deployment"]) == ("error", "openai/gpt-4o-mini")
    assert (row["prompt_tokens"], row["completion_tokens"]) == (o200k.count_messages(MESSAGES), completion)
    price = _price(proc, "fake-chat")
    assert row["cost_nanos"] == to_nanos(price.cost(row["prompt_tokens"], row["completion_tokens"])) > 0
    # The compact counter (~6 MiB), not tiktoken's encoder (~45 MiB): one count is not worth it.
    assert proc.log().count("built tokenizer o200k_base (compact)") == 1
    assert "built tokenizer o200k_base (tiktoken)" not in proc.log()
