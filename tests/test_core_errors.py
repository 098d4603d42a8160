"""Bad input and upstream faults: each gets the documented OpenAI-shaped error, and the
gateway keeps serving afterwards."""

from __future__ import annotations

import socket
import time

import httpx
import openai
import pytest
from conftest import FakeHandle

from support.gateway_proc import PROVIDER_KEY, GatewayProcess
from support.openai_schema import validate_response


def post(gateway: GatewayProcess, key: str | None, body: bytes | dict, path: str = "/v1/chat/completions",
         **headers: str) -> httpx.Response:
    all_headers = {"Authorization": f"Bearer {key}"} if key else {}
    all_headers.update(headers)
    if isinstance(body, dict):
        return httpx.post(f"{gateway.url}{path}", json=body, headers=all_headers, timeout=30)
    return httpx.post(f"{gateway.url}{path}", content=body, headers=all_headers, timeout=30)


def assert_error(response: httpx.Response, status: int, code: str | None = None, param: str | None = None) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    validate_response("ErrorResponse", body)
    error = body["error"]
    if code is not None:
        assert error["code"] == code, error
    if param is not None:
        assert error["param"] == param, error
    assert response.headers["x-request-id"]
    return error  # type: ignore[no-any-return]


CHAT = {"model": "fake-chat", "messages": [{"role": "user", "content": "hi"}]}


@pytest.mark.parametrize(
    ("body", "code", "param"),
    [
        (b"{not json", "invalid_json", None),
        (b"[1, 2]", "invalid_json", None),
        ({"messages": [{"role": "user", "content": "x"}]}, "invalid_value", "model"),
        ({"model": 42, "messages": []}, "invalid_value", "model"),
        ({"model": "fake-chat"}, "invalid_value", "messages"),
        ({"model": "fake-chat", "messages": "hello"}, "invalid_value", "messages"),
        ({"model": "fake-chat", "messages": [{"content": "no role"}]}, "invalid_value", "messages[0].role"),
        ({**CHAT, "stream": "yes"}, "invalid_value", "stream"),
        ({**CHAT, "max_tokens": -1}, "invalid_value", "max_tokens"),
        ({**CHAT, "n": 0}, "invalid_value", "n"),
        ({**CHAT, "temperature": "hot"}, "invalid_value", "temperature"),
        ({**CHAT, "stream_options": []}, "invalid_value", "stream_options"),
    ],
)
def test_invalid_bodies_name_the_field(
    gateway: GatewayProcess, team_keys: dict[str, str], body: bytes | dict, code: str, param: str | None
) -> None:
    error = assert_error(post(gateway, team_keys["alpha"], body), 400, code, param)
    if param:
        assert param.split("[")[0] in error["message"]


def test_embeddings_need_input(gateway: GatewayProcess, team_keys: dict[str, str]) -> None:
    assert_error(post(gateway, team_keys["alpha"], {"model": "fake-embed"}, "/v1/embeddings"), 400, param="input")
    assert_error(
        post(gateway, team_keys["alpha"], {"model": "fake-embed", "input": []}, "/v1/embeddings"), 400,
        param="input",
    )


def test_auth_errors(gateway: GatewayProcess) -> None:
    assert_error(post(gateway, None, CHAT), 401, "missing_api_key")
    error = assert_error(post(gateway, "gw-not-a-real-key-abcdefgh", CHAT), 401, "invalid_api_key")
    assert "gw-not-a-real" not in error["message"]
    assert_error(post(gateway, None, CHAT, Authorization="Basic Zm9vOmJhcg=="), 401)
    response = httpx.get(f"{gateway.url}/v1/models")
    assert_error(response, 401)


def test_unknown_model_and_forbidden_model(gateway: GatewayProcess, team_keys: dict[str, str]) -> None:
    assert_error(post(gateway, team_keys["alpha"], {**CHAT, "model": "no-such-model"}), 404, "model_not_found", "model")
    # beta may only call fake-chat and mock.
    assert_error(post(gateway, team_keys["beta"], {**CHAT, "model": "dead-chat"}), 403, "model_not_allowed", "model")
    # A chat alias on the embeddings endpoint is a clear 400, not an upstream error.
    assert_error(
        post(gateway, team_keys["alpha"], {"model": "fake-chat", "input": "x"}, "/v1/embeddings"), 400, "wrong_endpoint"
    )


def test_body_too_large(gateway: GatewayProcess, team_keys: dict[str, str]) -> None:
    huge = {**CHAT, "messages": [{"role": "user", "content": "x" * 100_000}]}
    assert_error(post(gateway, team_keys["alpha"], huge), 413, "request_too_large")


def test_body_too_large_without_content_length(gateway: GatewayProcess, team_keys: dict[str, str]) -> None:
    def chunks():  # chunked transfer encoding: no content-length to check up front
        for _ in range(20):
            yield b"x" * 10_000

    response = httpx.post(
        f"{gateway.url}/v1/chat/completions", content=chunks(),
        headers={"Authorization": f"Bearer {team_keys['alpha']}"},
    )
    assert_error(response, 413, "request_too_large")


def test_unknown_endpoint_and_method(gateway: GatewayProcess, team_keys: dict[str, str]) -> None:
    auth = {"Authorization": f"Bearer {team_keys['alpha']}"}
    response = httpx.get(f"{gateway.url}/v1/chat/completions", headers=auth)
    assert_error(response, 405, "method_not_allowed")
    assert_error(post(gateway, team_keys["alpha"], CHAT, "/v1/nothing-here"), 404, "unknown_url")


def test_upstream_down_is_503_and_fallback_recovers(gateway: GatewayProcess, team_keys: dict[str, str],
                                                    fake: FakeHandle) -> None:
    assert_error(post(gateway, team_keys["alpha"], {**CHAT, "model": "dead-chat"}), 503, "upstream_unavailable")
    # fallback-chat: the first deployment is dead, the second (weight 0) is the fake.
    response = post(gateway, team_keys["alpha"], {**CHAT, "model": "fallback-chat"})
    assert response.status_code == 200, response.text
    assert fake.stats()["last_request"]["body"]["model"] == "gpt-4o"


def test_upstream_rate_limit_passes_retry_after(gateway: GatewayProcess, team_keys: dict[str, str],
                                                fake: FakeHandle) -> None:
    fake.faults({"status": 429, "retry_after": "7"})
    response = post(gateway, team_keys["alpha"], CHAT)
    assert_error(response, 429, "upstream_rate_limited")
    assert response.headers["retry-after"] == "7"


def test_retries_on_5xx_then_succeeds(gateway: GatewayProcess, team_keys: dict[str, str], fake: FakeHandle) -> None:
    fake.faults({"status": 503, "times": 2})
    response = post(gateway, team_keys["alpha"], {**CHAT, "model": "fake-retry"})
    assert response.status_code == 200, response.text
    assert fake.stats()["requests"] == 3


def test_upstream_5xx_without_retries_is_502(gateway: GatewayProcess, team_keys: dict[str, str],
                                             fake: FakeHandle) -> None:
    fake.faults({"status": 500})
    error = assert_error(post(gateway, team_keys["alpha"], CHAT), 502, "upstream_status_500")
    assert "Traceback" not in error["message"]


def test_upstream_garbage_is_502(gateway: GatewayProcess, team_keys: dict[str, str], fake: FakeHandle) -> None:
    fake.faults({"garbage": True})
    assert_error(post(gateway, team_keys["alpha"], CHAT), 502, "upstream_malformed_response")
    fake.faults({"garbage": True})
    assert_error(post(gateway, team_keys["alpha"], {**CHAT, "stream": True}), 502, "upstream_malformed_response")


def test_upstream_timeout_is_504(gateway: GatewayProcess, team_keys: dict[str, str], fake: FakeHandle) -> None:
    fake.faults({"delay_ms": 6000})  # the alias' timeout_s is 5
    assert_error(post(gateway, team_keys["alpha"], CHAT), 504, "upstream_timeout")


def test_upstream_400_is_passed_on_without_secrets(gateway: GatewayProcess, team_keys: dict[str, str],
                                                   fake: FakeHandle) -> None:
    fake.faults({"status": 400})
    error = assert_error(post(gateway, team_keys["alpha"], CHAT), 400)
    assert PROVIDER_KEY not in error["message"]
    fake.faults({"status": 401})
    error = assert_error(post(gateway, team_keys["alpha"], CHAT), 401)
    assert "credentials" in error["message"] and PROVIDER_KEY not in error["message"]


def test_stream_cut_mid_way_ends_with_an_error_event(gateway: GatewayProcess, team_keys: dict[str, str],
                                                     fake: FakeHandle) -> None:
    fake.faults({"disconnect_after_chunks": 3})
    client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=team_keys["alpha"], max_retries=0)
    stream = client.chat.completions.create(model="fake-chat", messages=[{"role": "user", "content": "a b c d e f"}],
                                            stream=True)
    with pytest.raises(openai.APIError):
        for _ in stream:
            pass


def test_client_disconnect_cancels_the_upstream_stream(gateway: GatewayProcess, team_keys: dict[str, str],
                                                       fake: FakeHandle) -> None:
    fake.configure(chunk_delay_ms=200, stream_chunks=50)
    body = b'{"model":"fake-chat","stream":true,"messages":[{"role":"user","content":"long answer please"}]}'
    request = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + f"Authorization: Bearer {team_keys['alpha']}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    port = int(gateway.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(request)
        assert sock.recv(4096).startswith(b"HTTP/1.1 200")
    # The gateway records the request as cancelled by the client (499) once it notices.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if '"status":499' in gateway.log():
            break
        time.sleep(0.1)
    assert '"status":499' in gateway.log()


def test_server_keeps_serving_after_bad_input(gateway: GatewayProcess, team_keys: dict[str, str],
                                              fake: FakeHandle) -> None:
    for body in (b"\xff\xfe", b"{}", b"null", b'{"model": "fake-chat", "messages": [null]}'):
        assert post(gateway, team_keys["alpha"], body).status_code == 400
    assert post(gateway, team_keys["alpha"], CHAT).status_code == 200


def test_no_key_appears_in_logs(gateway: GatewayProcess, team_keys: dict[str, str], admin_key: str) -> None:
    log = gateway.log()
    assert team_keys["alpha"] not in log and team_keys["beta"] not in log
    assert admin_key not in log and PROVIDER_KEY not in log
