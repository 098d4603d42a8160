"""Tracing on every path a chat request can take, through a running gateway and the ``openai`` SDK.

JSON, a stream without ``stream_options.include_usage`` and a stream with it; on the ``mock``
provider, the OpenAI-compatible fast path (the fake upstream) and litellm (an Anthropic
deployment pointed at the fake's Anthropic wire format). For each request: one span, whose
output is the answer the caller got, whose usage and cost equal the ledger row's (to the
nano-dollar; a stream whose caller asked for no usage is still measured and charged), and whose
trace id the row holds. (The stream-budget defect hid in the paths that no test took.) And a
cache hit, JSON or stream: traced as a hit that cost nothing and saved what the ledger says.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from conftest import FakeHandle
from openai import OpenAI

from gateway.pricing import to_nanos
from gateway.storage.schema import ledger
from gateway.testing.langfuse_receiver import LangfuseReceiver
from support.gateway_proc import GatewayProcess
from support.ledger import wait_for_rows
from support.tracing import one_span, traced_gateway

PRICE = {"input_cost_per_token": 2e-6, "output_cost_per_token": 8e-6}
PROVIDERS = ("mock", "compat", "litellm")
MODES = ("json", "stream", "stream-usage")
MESSAGES: Any = [{"role": "user", "content": "Name three things a trace should hold."}]



@pytest.fixture(scope="module")
def gateway(
    tmp_path_factory: pytest.TempPathFactory, fake_upstream: FakeHandle, receiver: LangfuseReceiver
) -> Iterator[GatewayProcess]:
    root = tmp_path_factory.mktemp("traced-paths")
    upstream = {"api_key": "${TEST_PROVIDER_KEY}", "timeout_s": 10, "retries": 0, **PRICE}
    models = {"aliases": {
        "mock": {"deployments": [{"provider": "mock", "model": "mock-1", **PRICE}]},
        "compat": {"deployments": [{"provider": "openai", "model": "gpt-4o-mini",
                                    "base_url": f"{fake_upstream.url}/v1", **upstream}]},
        "litellm": {"deployments": [{"provider": "anthropic", "model": "claude-haiku-4-5",
                                     "base_url": fake_upstream.url, **upstream}]},
    }}
    proc = traced_gateway(root, fake_upstream.url, receiver, models=models, mirror_prompts=False, teams={"teams": {
        "paths": {"models": ["*"]},
        "cached": {"models": ["*"], "cache": {"enabled": True, "ttl_s": 60}},
    }})
    proc.start()
    yield proc
    proc.stop()


def _ask(client: OpenAI, alias: str, mode: str) -> tuple[str, str, Any]:
    """(trace id, the answer's text, the usage the caller got or None)."""
    if mode == "json":
        raw = client.chat.completions.with_raw_response.create(model=alias, messages=MESSAGES, max_tokens=40)
        answer = raw.parse()
        return raw.headers["x-gateway-trace-id"], answer.choices[0].message.content or "", answer.usage
    extra: dict[str, Any] = {"stream_options": {"include_usage": True}} if mode == "stream-usage" else {}
    with client.chat.completions.with_streaming_response.create(
        model=alias, messages=MESSAGES, max_tokens=40, stream=True, **extra
    ) as response:
        text, usage = "", None
        for chunk in response.parse():
            usage = chunk.usage or usage
            for choice in chunk.choices:
                text += choice.delta.content or ""
        return response.headers["x-gateway-trace-id"], text, usage


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("provider", PROVIDERS)
async def test_every_path_is_one_generation_with_the_ledgers_usage_and_cost(
    gateway: GatewayProcess, receiver: LangfuseReceiver, fake: FakeHandle, provider: str, mode: str
) -> None:
    client = OpenAI(base_url=f"{gateway.url}/v1", api_key=gateway.create_key("paths"), max_retries=0, timeout=30)
    trace_id, text, usage = _ask(client, provider, mode)
    assert text, "an answer came back"
    assert (usage is not None) == (mode != "stream")  # usage only to a caller that asked for it

    span = one_span(receiver, trace_id)
    a = span.attributes
    assert span.json("langfuse.observation.output") == {"role": "assistant", "content": text}
    assert span.json("langfuse.observation.input") == MESSAGES
    assert a["langfuse.observation.metadata.stream"] is (mode != "json")
    assert a["langfuse.observation.metadata.status"] == 200 and span.status_code == 0
    if mode != "json":
        assert "langfuse.observation.completion_start_time" in a

    [row] = await wait_for_rows(gateway.config.database_url, ledger.c.trace_id == trace_id, until=bool)
    details = span.json("langfuse.observation.usage_details")
    assert (details["input"], details["output"]) == (row["prompt_tokens"], row["completion_tokens"])
    assert row["prompt_tokens"] > 0 and row["completion_tokens"] > 0
    if usage is not None:
        assert (usage.prompt_tokens, usage.completion_tokens) == (row["prompt_tokens"], row["completion_tokens"])
    assert to_nanos(span.json("langfuse.observation.cost_details")["total"]) == row["cost_nanos"] > 0


@pytest.mark.parametrize("mode", ["json", "stream"])
async def test_a_cache_hit_is_traced_as_a_hit_that_cost_nothing_and_saved_the_ledgers_figure(
    gateway: GatewayProcess, receiver: LangfuseReceiver, fake: FakeHandle, mode: str
) -> None:
    client = OpenAI(base_url=f"{gateway.url}/v1", api_key=gateway.create_key("cached"), max_retries=0, timeout=30)
    messages = [{"role": "user", "content": f"A question asked twice ({mode})."}]
    traces, texts = [], []
    for _ in range(2):
        if mode == "json":
            raw = client.chat.completions.with_raw_response.create(model="compat", messages=messages, temperature=0)
            traces.append(raw.headers["x-gateway-trace-id"])
            texts.append(raw.parse().choices[0].message.content)
        else:
            with client.chat.completions.with_streaming_response.create(
                model="compat", messages=messages, temperature=0, stream=True,
            ) as response:
                traces.append(response.headers["x-gateway-trace-id"])
                texts.append("".join(chunk.choices[0].delta.content or "" for chunk in response.parse()
                                     if chunk.choices))
    assert texts[0] == texts[1] and texts[0]
    miss, hit = (one_span(receiver, trace_id) for trace_id in traces)
    assert (miss.metadata["cache_status"], hit.metadata["cache_status"]) == ("MISS", "HIT")
    assert hit.json("langfuse.observation.output") == {"role": "assistant", "content": texts[1]}

    rows = await wait_for_rows(gateway.config.database_url, ledger.c.trace_id.in_(traces),
                               until=lambda rows: len(rows) == 2)
    by_trace = {row["trace_id"]: row for row in rows}
    miss_row, hit_row = by_trace[traces[0]], by_trace[traces[1]]
    assert (hit_row["kind"], hit_row["cost_nanos"]) == ("cache_hit", 0)
    assert to_nanos(hit.json("langfuse.observation.cost_details")["total"]) == 0
    assert to_nanos(hit.metadata["saved_cost"]) == hit_row["saved_nanos"] == miss_row["cost_nanos"] > 0
