"""The README's quick start, run as written (``tests/support/walkthrough.py``): the shipped
gateway.yaml and policies, no services, a key from the CLI, and an answer from the built-in
mock model through curl and the ``openai`` SDK. The README's test command is the one CI runs."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from support.gateway_proc import REPO, free_port
from support.walkthrough import Terminal, blocks, project, run_block, start_gateway, stop

README = REPO / "README.md"


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Terminal]:
    """The quick start's first block, `... && .venv/bin/gateway serve`, running in a new project."""
    folder = project(tmp_path_factory.mktemp("quickstart"))
    terminal = Terminal(folder, free_port())
    serve = blocks(README, "quickstart")[0]
    proc = start_gateway(terminal, serve, folder.parent / "gateway.log")
    yield terminal
    stop(proc)


def test_embedded_defaults_need_no_service(quickstart: Terminal) -> None:
    assert (quickstart.cwd / ".gateway" / "gateway.db").exists(), "SQLite under .gateway/ by default"
    ready = httpx.get(f"http://127.0.0.1:{quickstart.port}/health/ready").json()
    assert set(ready["checks"]) == {"storage"}, "no Redis is configured by default"


def test_the_readme_quick_start_runs_as_written(quickstart: Terminal) -> None:
    serve, *rest = blocks(README, "quickstart")
    assert serve.background and [block.language for block in rest] == ["bash", "python"]
    for block in rest:
        run_block(quickstart, block)
    # The key the walkthrough made streams too.
    key = quickstart.variable("KEY")
    assert key and key.startswith("gw-")
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{quickstart.port}/v1", api_key=key)
    streamed = client.chat.completions.create(model="mock", messages=[{"role": "user", "content": "Hi!"}],
                                              stream=True)
    assert "".join(chunk.choices[0].delta.content or "" for chunk in streamed if chunk.choices) == "Mock answer: Hi!"


def test_the_readme_is_a_front_door() -> None:
    readme = README.read_text()
    assert len(readme.splitlines()) <= 300, "the README stays short: details belong under docs/"
    for page in ("applications", "prompt-authors", "operations", "finance", "architecture"):
        assert f"(docs/{page}.md)" in readme and (REPO / "docs" / f"{page}.md").exists()
    assert "(benchmarks/README.md)" in readme


def test_the_readme_test_command_is_what_ci_runs() -> None:
    section = README.read_text().split("## Running the tests", 1)[1]
    command = section.split("```bash\n", 1)[1].split("\n```", 1)[0]
    ci = (REPO / ".ci" / "run").read_text().strip().splitlines()
    assert ci[-1] == command, "the README's test command must be the one .ci/run runs"


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
