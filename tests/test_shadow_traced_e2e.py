"""A shadow copy is traced as an observation in its primary's trace, through a real gateway:
the caller's trace id holds two spans, the copy's a child of the caller's generation, with
origin ``shadow`` and the primary's request id, and the shadow target as its alias."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from conftest import FakeHandle, make_gateway
from openai import OpenAI

from gateway.testing.langfuse_receiver import LangfuseReceiver, ReceivedSpan
from support.gateway_proc import GatewayProcess

META = "langfuse.observation.metadata."


@pytest.fixture(scope="module")
def receiver() -> Iterator[LangfuseReceiver]:
    with LangfuseReceiver() as running:
        yield running


@pytest.fixture(scope="module")
def traced(
    tmp_path_factory: pytest.TempPathFactory, fake_upstream: FakeHandle, receiver: LangfuseReceiver
) -> Iterator[GatewayProcess]:
    root: Path = tmp_path_factory.mktemp("shadow-traced")
    tracing = {
        "host": receiver.url, "public_key": receiver.public_key, "secret_key": "${TEST_LANGFUSE_SECRET}",
        "environment": "test", "flush_interval_ms": 20, "timeout_s": 0.5, "shutdown_timeout_s": 1.0,
    }
    proc = make_gateway(root, fake_upstream.url, f"sqlite:///{root / 'gateway.db'}", extra={"tracing": tracing})
    proc.env["TEST_LANGFUSE_SECRET"] = receiver.secret_key
    shadows = {"shadows": {"mirror": {"target": "mock", "sample_rate": 1.0, "traffic": {"alias": "fake-chat"}}}}
    (proc.config.root / "policies" / "shadows.yaml").write_text(yaml.safe_dump(shadows))
    proc.start()
    yield proc
    proc.stop()


def _spans_of(receiver: LangfuseReceiver, trace_id: str, count: int, timeout: float = 10.0) -> list[ReceivedSpan]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [span for span in receiver.spans() if span.trace_id == trace_id]
        if len(found) >= count:
            time.sleep(0.1)  # a duplicate would come with the same batch or the next
            return [span for span in receiver.spans() if span.trace_id == trace_id]
        time.sleep(0.02)
    raise AssertionError(f"fewer than {count} spans for trace {trace_id}")


@pytest.mark.parametrize("stream", [False, True])
def test_a_shadow_copy_is_a_child_observation_of_its_primarys_trace(
    traced: GatewayProcess, receiver: LangfuseReceiver, stream: bool
) -> None:
    client = OpenAI(base_url=f"{traced.url}/v1", api_key=traced.create_key("alpha"), max_retries=0, timeout=20)
    messages = [{"role": "user", "content": f"shadow me ({'stream' if stream else 'json'})"}]
    if stream:
        streamed = client.chat.completions.with_raw_response.create(
            model="fake-chat", messages=messages, stream=True  # type: ignore[arg-type]
        )
        trace_id, request_id = streamed.headers["x-gateway-trace-id"], streamed.headers["x-request-id"]
        for _ in streamed.parse():  # the copy goes out after the last event
            pass
    else:
        raw = client.chat.completions.with_raw_response.create(model="fake-chat", messages=messages)  # type: ignore[arg-type]
        trace_id, request_id = raw.headers["x-gateway-trace-id"], raw.headers["x-request-id"]

    spans = _spans_of(receiver, trace_id, 2)
    assert len(spans) == 2, [span.attributes.get(META + "origin") for span in spans]
    by_origin = {span.attributes[META + "origin"]: span for span in spans}
    primary, copy = by_origin["caller"], by_origin["shadow"]
    assert copy.parent_span_id == primary.span_id and copy.span_id != primary.span_id
    assert copy.attributes[META + "parent_request_id"] == request_id
    assert primary.attributes[META + "request_id"] == request_id
    assert (primary.attributes[META + "alias"], copy.attributes[META + "alias"]) == ("fake-chat", "mock")
    assert copy.attributes[META + "status"] == 200
