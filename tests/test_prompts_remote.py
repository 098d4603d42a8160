"""The remote CLI: the prompt author's walkthrough through a running gateway's admin API.

The walkthrough in docs/prompt-authors.md runs as written (``tests/support/walkthrough.py``),
after the README's quick start started the gateway: the CLI runs in a folder holding only
``prompts/`` (no gateway.yaml), with ``GATEWAY_URL`` and ``GATEWAY_KEY`` and no database URL
in its environment, the way a CI runner or a laptop would run it. An ``author`` key pushes,
evaluates and moves ``staging``; only an ``approver`` key moves ``production``. Output and
exit codes match local mode.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_prompts_e2e import ShippedGateway, audit_trail

from support.gateway_proc import REPO, free_port
from support.walkthrough import Terminal, blocks, project, run_block, start_gateway, stop

# Each CLI call is a process start (about a second): the walkthrough makes some forty.
pytestmark = pytest.mark.slow

@pytest.fixture(scope="module")
def shipped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ShippedGateway]:
    root = tmp_path_factory.mktemp("shipped")
    gateway = ShippedGateway(root, f"sqlite:///{root / 'gateway.db'}").start()
    yield gateway
    gateway.stop()


class RemoteCli:
    """`gateway ...` on a machine that has the prompt files and a key, nothing else."""

    def __init__(self, folder: Path, url: str, key: str) -> None:
        self.folder = folder
        self.env = {"PATH": "/usr/bin:/bin", "HOME": str(folder), "GATEWAY_URL": url, "GATEWAY_KEY": key}
        self.key = key

    def __call__(self, *args: str, check: bool = True, **env: str) -> subprocess.CompletedProcess[str]:
        result = subprocess.run([sys.executable, "-m", "gateway", *args], cwd=self.folder,
                                env={**self.env, **env}, capture_output=True, text=True, timeout=120)
        assert self.key not in result.stdout + result.stderr, "the key must never be printed"
        if check and result.returncode != 0:
            raise AssertionError(f"gateway {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
        return result


@pytest.fixture(scope="module")
def laptop(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("laptop")
    shutil.copytree(REPO / "prompts", folder / "prompts")
    assert not (folder / "gateway.yaml").exists()
    return folder


def key(gw: ShippedGateway, *roles: str) -> str:
    role_args = [arg for role in roles for arg in ("--role", role)]
    return gw.gateway("keys", "create", "--team", "support", *role_args).stdout.strip().splitlines()[-1]


@pytest.fixture
def walkthrough_terminal(tmp_path: Path) -> Iterator[Terminal]:
    """A reader's shell after the README's quick start: the gateway runs in the project folder."""
    folder = project(tmp_path)
    terminal = Terminal(folder, free_port())
    proc = start_gateway(terminal, blocks(REPO / "README.md", "quickstart")[0], tmp_path / "gateway.log")
    yield terminal
    stop(proc)


def test_the_prompt_author_walkthrough_runs_as_written(walkthrough_terminal: Terminal) -> None:
    """docs/prompt-authors.md, block by block: keys from the operator, then the author's and the
    approver's commands through the remote CLI, checked against the output the page shows."""
    terminal = walkthrough_terminal
    project_folder = terminal.cwd
    steps = blocks(REPO / "docs" / "prompt-authors.md", "prompt-author")
    assert len(steps) == 9, "the walkthrough's marked blocks"
    keys, connect, *author_steps = steps
    run_block(terminal, keys)
    run_block(terminal, connect)
    # From here on the shell is a laptop's: prompt files and a key, no config, no database URL.
    laptop = terminal.cwd
    assert laptop != project_folder and not (laptop / "gateway.yaml").exists()
    assert terminal.variable("DATABASE_URL") is None and terminal.variable("GATEWAY_URL")
    author_key, approver_key = terminal.variable("AUTHOR_KEY"), terminal.variable("APPROVER_KEY")
    assert author_key and approver_key and terminal.variable("GATEWAY_KEY") == author_key
    for block in author_steps:
        for result in run_block(terminal, block):
            for key in (author_key, approver_key):
                assert key not in result.stdout + result.stderr, "the key must never be printed"

    # Every step is audited under the acting key (author or approver), never a CLI user.
    database_url = f"sqlite:///{project_folder / '.gateway' / 'gateway.db'}"
    trail = audit_trail(database_url, "prompt:support-answer")
    assert [action for action, *_ in trail] == [
        "prompt.push", "prompt.label", "prompt.push", "prompt.label", "prompt.promote", "prompt.rollback"]
    assert not any(actor.startswith("cli:") for *_, actor in trail)
    # Reads through the API print what local mode prints, JSON byte for byte.
    for args in (("list",), ("history", "support-answer"), ("show", "support-answer@staging")):
        remote = terminal.run(f"gateway prompts {' '.join(args)} --format json")
        local = subprocess.run([sys.executable, "-m", "gateway", "prompts", *args, "--format", "json"],
                               cwd=project_folder, env={"PATH": "/usr/bin:/bin", "HOME": str(project_folder)},
                               capture_output=True, text=True, timeout=60, check=True)
        assert remote.returncode == 0 and remote.stdout == local.stdout


def test_remote_errors_are_the_cli_error_lines(shipped: ShippedGateway, laptop: Path, tmp_path: Path) -> None:
    author = RemoteCli(laptop, shipped.url, key(shipped, "author"))

    # An invalid prompt is refused before it is sent, with file and line, as in local mode.
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad-one\nmodel: mock\nmessages:\n  - role: user\n    content: '{{ missing }}'\n")
    refused = author("prompts", "push", str(bad), "-m", "nope", check=False)
    assert refused.returncode == 1
    assert refused.stderr.strip().splitlines() == [
        f"error: {bad}:5: messages[0].content: uses the variable 'missing', which variables.properties does not "
        "declare"]
    # The gateway's own checks (the model alias, against its policies) come back the same way.
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("name: unknown-model\nmodel: no-such-alias\nmessages:\n  - role: user\n    content: hi\n")
    refused = author("prompts", "push", str(unknown), "-m", "nope", check=False)
    assert refused.returncode == 1
    assert refused.stderr.strip() == f"error: {unknown}:2: model: unknown model alias 'no-such-alias'"

    unknown_prompt = author("prompts", "show", "no-such-prompt", check=False)
    assert unknown_prompt.returncode == 1 and unknown_prompt.stderr.startswith("error: ")
    assert "no-such-prompt" in unknown_prompt.stderr

    wrong_key = author("prompts", "list", check=False, GATEWAY_KEY="gw-not-a-real-key-123456")
    assert (wrong_key.returncode, wrong_key.stderr.strip()) == (1, "error: Invalid or missing API key.")
    assert "gw-not-a-real-key-123456" not in wrong_key.stderr
    local_only = author("prompts", "label", "set", "x", "staging", "1", "--author", "me", check=False)
    assert local_only.returncode == 1 and "--author applies to local mode only" in local_only.stderr
    no_key = author("prompts", "list", check=False, GATEWAY_KEY="")
    assert no_key.returncode == 1 and "needs an API key" in no_key.stderr
    dead = author("prompts", "list", check=False, GATEWAY_URL="http://127.0.0.1:9")
    assert dead.returncode == 1 and dead.stderr.startswith("error: Cannot reach the gateway at http://127.0.0.1:9")
    # --url/--key on the command line work like the environment.
    author("prompts", "push", "summarise", "-m", "to be listed")
    assert "summarise" in author("prompts", "list", "--url", shipped.url, "--key", author.key,
                                 GATEWAY_URL="", GATEWAY_KEY="").stdout
