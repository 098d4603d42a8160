"""The README's quick start, as a new user runs it: the shipped gateway.yaml and policies,
no services, a key from the CLI, and an answer from the built-in mock model."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from support.gateway_proc import REPO, free_port


@pytest.fixture(scope="module")
def shipped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, int]]:
    root = tmp_path_factory.mktemp("quickstart")
    shutil.copy(REPO / "gateway.yaml", root / "gateway.yaml")
    shutil.copytree(REPO / "policies", root / "policies")
    if (REPO / "prompts").is_dir():
        shutil.copytree(REPO / "prompts", root / "prompts")
    port = free_port()
    env = {"PATH": "/usr/bin:/bin", "HOME": str(root), "GATEWAY_PORT": str(port)}
    proc = subprocess.Popen([sys.executable, "-m", "gateway", "serve"], cwd=root, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    started = time.monotonic()
    while time.monotonic() - started < 20:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health/ready", timeout=0.5).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.05)
    else:
        proc.kill()
        raise RuntimeError(proc.stdout.read().decode() if proc.stdout else "gateway did not start")
    yield root, port
    proc.terminate()
    proc.wait(10)


def test_embedded_defaults_need_no_service(shipped: tuple[Path, int]) -> None:
    root, port = shipped
    assert (root / ".gateway" / "gateway.db").exists(), "SQLite under .gateway/ by default"
    ready = httpx.get(f"http://127.0.0.1:{port}/health/ready").json()
    assert set(ready["checks"]) == {"storage"}, "no Redis is configured by default"


def test_new_user_gets_a_key_and_an_answer(shipped: tuple[Path, int]) -> None:
    root, port = shipped
    created = subprocess.run([sys.executable, "-m", "gateway", "keys", "create", "--team", "demo"], cwd=root,
                             capture_output=True, text=True, check=True, env={"PATH": "/usr/bin:/bin"})
    key = created.stdout.strip().splitlines()[-1]
    # The curl snippet.
    response = httpx.post(
        f"http://127.0.0.1:{port}/v1/chat/completions",
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
        content=b'{"model": "mock", "messages": [{"role": "user", "content": "Hello, gateway!"}]}',
    )
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["content"] == "Mock answer: Hello, gateway!"
    # The openai SDK snippet.
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=key)
    reply = client.chat.completions.create(model="mock", messages=[{"role": "user", "content": "Hi!"}])
    assert reply.choices[0].message.content == "Mock answer: Hi!"
    streamed = client.chat.completions.create(model="mock", messages=[{"role": "user", "content": "Hi!"}],
                                              stream=True)
    assert "".join(chunk.choices[0].delta.content or "" for chunk in streamed if chunk.choices) == "Mock answer: Hi!"


def test_fake_upstream_command(tmp_path: Path) -> None:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "gateway", "fake-upstream", "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        started = time.monotonic()
        while time.monotonic() - started < 10:
            try:
                models = httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=0.5)
                break
            except httpx.HTTPError:
                time.sleep(0.05)
        assert models.json()["object"] == "list"
    finally:
        proc.terminate()
        proc.wait(10)
