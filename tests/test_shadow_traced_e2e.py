"""A shadow copy through a real gateway is an observation in its primary's trace (the caller's
trace id holds two spans, the copy's a child of the caller's generation, with origin ``shadow``,
the primary's request id and the shadow target as its alias), and never a caller's request in
the request metrics."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml
from conftest import FakeHandle
from openai import OpenAI
from prometheus_client.parser import text_string_to_metric_families

from gateway.testing.langfuse_receiver import LangfuseReceiver, ReceivedSpan
from support.gateway_proc import GatewayProcess
from support.tracing import traced_gateway

META = "langfuse.observation.metadata."


@pytest.fixture(scope="module")
def traced(
    tmp_path_factory: pytest.TempPathFactory, fake_upstream: FakeHandle, receiver: LangfuseReceiver
) -> Iterator[GatewayProcess]:
    root: Path = tmp_path_factory.mktemp("shadow-traced")
    proc = traced_gateway(root, fake_upstream.url, receiver)
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


def test_shadow_copies_are_not_callers_requests_in_the_metrics(traced: GatewayProcess) -> None:
    def samples() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        found = {}
        for family in text_string_to_metric_families(httpx.get(f"{traced.url}/metrics", timeout=10).text):
            for sample in family.samples:
                found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
        return found

    completed = ("gateway_shadow_copies_total", (("outcome", "completed"), ("rule", "mirror")))
    # Counted from here: the module's other tests may or may not have run on this worker's gateway.
    before = samples().get(completed, 0)
    client = OpenAI(base_url=f"{traced.url}/v1", api_key=traced.create_key("alpha"), max_retries=0, timeout=20)
    client.chat.completions.create(model="fake-chat", messages=[{"role": "user", "content": "count me once"}])
    deadline = time.monotonic() + 10
    while samples().get(completed, 0) < before + 1:
        assert time.monotonic() < deadline, "the copies did not complete"
        time.sleep(0.05)
    counted = samples()
    callers = [key for key in counted if key[0] == "gateway_requests_total"]
    assert callers and all(dict(labels)["model"] == "fake-chat" for _, labels in callers)
    # The copies' upstream calls are real and counted as such (the mock deployment's outcomes).
    assert any(name == "gateway_upstream_duration_seconds_count" and "mock" in dict(labels).get("deployment", "")
               for name, labels in counted)
