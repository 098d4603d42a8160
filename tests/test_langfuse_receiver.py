"""The local Langfuse receiver takes what the official SDK and OTLP exporter send."""

from __future__ import annotations

import gzip
import os

import httpx
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span

from gateway.testing.langfuse_receiver import TRACES_PATH, LangfuseReceiver


@pytest.fixture
def receiver() -> LangfuseReceiver:
    with LangfuseReceiver() as running:
        yield running  # type: ignore[misc]


def _payload(name: str) -> bytes:
    span = Span(trace_id=bytes(range(16)), span_id=bytes(range(8)), name=name)
    span.attributes.add(key="langfuse.observation.type").value.string_value = "generation"
    request = ExportTraceServiceRequest(resource_spans=[ResourceSpans(scope_spans=[ScopeSpans(spans=[span])])])
    return request.SerializeToString()


def _auth(receiver: LangfuseReceiver) -> httpx.BasicAuth:
    return httpx.BasicAuth(receiver.public_key, receiver.secret_key)


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity"), reason="thread affinity is Linux's")
def test_a_benchmark_can_keep_it_off_the_measured_core() -> None:
    core = max(os.sched_getaffinity(0))
    with LangfuseReceiver(cpus={core}) as pinned:
        thread = pinned._thread
        assert thread is not None and thread.native_id is not None
        assert os.sched_getaffinity(thread.native_id) == {core}
        response = httpx.post(pinned.url + TRACES_PATH, content=_payload("pinned"), auth=_auth(pinned),
                              headers={"Content-Type": "application/x-protobuf"})
        assert response.status_code == 200 and pinned.span_count == 1
    assert os.sched_getaffinity(0) != {core} or len(os.sched_getaffinity(0)) == 1  # the caller is not pinned


def test_the_official_langfuse_sdk_reaches_it(receiver: LangfuseReceiver) -> None:
    from langfuse import Langfuse

    client = Langfuse(public_key=receiver.public_key, secret_key=receiver.secret_key, host=receiver.url)
    generation = client.start_observation(
        name="chat", as_type="generation", model="gpt-4o-mini", input=[{"role": "user", "content": "hi"}],
        usage_details={"input": 3, "output": 5}, cost_details={"total": 0.25},
    )
    generation.update(output={"role": "assistant", "content": "hello"})
    generation.end()
    client.flush()
    client.shutdown()
    [span] = [s for s in receiver.spans() if s.name == "chat"]
    assert span.attributes["langfuse.observation.type"] == "generation"
    assert span.attributes["langfuse.observation.model.name"] == "gpt-4o-mini"
    assert span.json("langfuse.observation.cost_details") == {"total": 0.25}
    assert span.json("langfuse.observation.output") == {"role": "assistant", "content": "hello"}
    assert b"hello" in b"".join(receiver.raw())


def test_gzip_payloads_are_kept_decompressed(receiver: LangfuseReceiver) -> None:
    response = httpx.post(
        receiver.url + TRACES_PATH, content=gzip.compress(_payload("zipped")), auth=_auth(receiver),
        headers={"content-type": "application/x-protobuf", "content-encoding": "gzip"},
    )
    assert response.status_code == 200
    assert [s.name for s in receiver.spans()] == ["zipped"]
    assert b"zipped" in receiver.raw()[0]


def test_wrong_credentials_get_401(receiver: LangfuseReceiver) -> None:
    response = httpx.post(receiver.url + TRACES_PATH, content=_payload("x"), auth=httpx.BasicAuth("pk", "nope"),
                          headers={"content-type": "application/x-protobuf"})
    assert response.status_code == 401
    assert receiver.spans() == []


def test_failure_modes(receiver: LangfuseReceiver) -> None:
    post = {"content": _payload("m"), "auth": _auth(receiver), "headers": {"content-type": "application/x-protobuf"}}
    receiver.set_mode("error")
    assert httpx.post(receiver.url + TRACES_PATH, **post).status_code == 500  # type: ignore[arg-type]
    receiver.set_mode("hang")
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(receiver.url + TRACES_PATH, timeout=0.3, **post)  # type: ignore[arg-type]
    receiver.set_mode("stopped")
    with pytest.raises(httpx.ConnectError):
        httpx.post(receiver.url + TRACES_PATH, **post)  # type: ignore[arg-type]
    receiver.set_mode("normal")
    assert httpx.post(receiver.url + TRACES_PATH, **post).status_code == 200  # type: ignore[arg-type]
    assert len(receiver.spans()) == 1
    assert receiver.trace_posts == 3  # the refused connection never reached it


def test_prompt_management_and_scores(receiver: LangfuseReceiver) -> None:
    auth = _auth(receiver)
    url = receiver.url + "/api/public/v2/prompts"
    first = httpx.post(url, json={"name": "greet", "type": "text", "prompt": "v1", "labels": ["production"]}, auth=auth)
    second = httpx.post(url, json={"name": "greet", "type": "text", "prompt": "v2", "labels": []}, auth=auth)
    assert (first.json()["version"], second.json()["version"]) == (1, 2)
    assert httpx.get(f"{url}/greet", auth=auth).json()["prompt"] == "v1"
    moved = httpx.patch(f"{url}/greet/versions/2", json={"newLabels": ["production"]}, auth=auth)
    assert "production" in moved.json()["labels"]
    assert httpx.get(f"{url}/greet", auth=auth).json()["prompt"] == "v2"
    assert [p["labels"] for p in receiver.prompts("greet")] == [[], ["latest", "production"]]
    httpx.post(receiver.url + "/api/public/scores", json={"traceId": "t", "name": "q", "value": 1}, auth=auth)
    assert receiver.scores() == [{"traceId": "t", "name": "q", "value": 1}]
    # Like Langfuse: the project's keys are required, and a score names its trace, name and value.
    assert httpx.post(receiver.url + "/api/public/scores", json={"traceId": "t", "name": "q", "value": 1},
                      auth=("pk-lf-test", "wrong")).status_code == 401
    assert httpx.post(receiver.url + "/api/public/scores", json={"name": "q", "value": 1}, auth=auth).status_code == 400
    httpx.post(receiver.url + "/api/public/scores", json={"traceId": "t", "name": "other", "value": 0}, auth=auth)
    assert [s["name"] for s in receiver.scores("other")] == ["other"] and len(receiver.scores()) == 2
