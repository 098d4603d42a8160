"""The remote CLI: the prompt author's walkthrough through a running gateway's admin API.

The CLI runs as a subprocess in a folder holding only ``prompts/`` (no gateway.yaml), with
``GATEWAY_URL`` and ``GATEWAY_KEY`` and no database URL in its environment, the way a CI
runner or a laptop would run it. An ``author`` key pushes, evaluates and moves ``staging``;
only an ``approver`` key moves ``production``. Output and exit codes match local mode.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_prompts_e2e import ShippedGateway, audit_trail

from support.gateway_proc import REPO

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


def test_the_prompt_walkthrough_runs_remotely_with_author_and_approver_keys(
    shipped: ShippedGateway, laptop: Path
) -> None:
    gw = shipped
    author = RemoteCli(laptop, gw.url, key(gw, "author"))
    approver = RemoteCli(laptop, gw.url, key(gw, "approver"))

    # 2. Push the first version (a bare name is found in ./prompts).
    pushed = author("prompts", "push", "support-answer", "-m", "First version of the support answer",
                    "--ticket", "SUP-101")
    assert "Pushed support-answer v1" in pushed.stdout
    assert "Unchanged: this content is already support-answer v1" in author(
        "prompts", "push", "prompts/support-answer", "-m", "again").stdout

    # 4. Evaluate it; the author cannot put it in production, the approver can.
    evaluated = author("prompts", "eval", "support-answer@v1")
    assert "PASSED: 3/3 cases" in evaluated.stdout and "recorded as evaluation #1" in evaluated.stdout
    refused = author("prompts", "label", "set", "support-answer", "production", "1", check=False)
    assert refused.returncode == 1 and refused.stdout == ""
    assert refused.stderr.startswith("error: ") and "approver or admin role" in refused.stderr
    assert "support-answer@production: (unset) → v1" in approver(
        "prompts", "label", "set", "support-answer", "production", "1").stdout

    # 5. Change it, push v2, label it staging (an author may move an unprotected label).
    prompt = laptop / "prompts" / "support-answer" / "prompt.yaml"
    prompt.write_text(prompt.read_text().replace("Be brief and friendly.", "Be brief, friendly and precise."))
    assert "Pushed support-answer v2" in author("prompts", "push", "prompts/support-answer", "-m",
                                                "Ask for precision", "--ticket", "SUP-102").stdout
    diff = author("prompts", "diff", "support-answer", "v1", "v2").stdout
    assert diff.startswith("--- support-answer@v1\n+++ support-answer@v2\n")
    assert "\n+    the question, say that a human agent will follow up. Be brief, friendly and precise.\n" in diff
    assert "support-answer@staging: (unset) → v2" in author(
        "prompts", "label", "set", "support-answer", "staging", "v2").stdout

    # 6. Promotion: refused before an evaluation, refused to the author, done by the approver.
    refused = approver("prompts", "promote", "support-answer", "--from", "staging", "--to", "production",
                       check=False)
    assert refused.returncode == 1 and "'support-answer' v2 has no evaluation" in refused.stderr
    assert "PASSED: 3/3 cases" in author("prompts", "eval", "support-answer@staging").stdout
    refused = author("prompts", "promote", "support-answer", check=False)
    assert refused.returncode == 1 and "approver or admin role" in refused.stderr
    promoted = approver("prompts", "promote", "support-answer", "--from", "staging", "--to", "production")
    assert "support-answer@production: v1 → v2 (evaluation #2 passed)" in promoted.stdout

    # 7. Roll back: the author may not touch production, the approver may.
    assert author("prompts", "rollback", "support-answer", "production", check=False).returncode == 1
    rolled = approver("prompts", "rollback", "support-answer", "production", "--reason", "customers prefer v1")
    assert "support-answer@production: v2 → v1" in rolled.stdout

    # 8. Reads, through the API; the same output as local mode (JSON byte for byte).
    history = author("prompts", "history", "support-answer").stdout
    assert "Ask for precision" in history and "rollback" in history
    shown = author("prompts", "show", "support-answer@production").stdout
    assert shown.startswith("support-answer v1  labels: production") and "signature verified" in shown
    for args in (("list",), ("history", "support-answer"), ("show", "support-answer@staging")):
        remote = author("prompts", *args, "--format", "json").stdout
        assert remote == gw.gateway("prompts", *args, "--format", "json").stdout
    assert author("prompts", "show", "support-answer@v2").stdout == gw.gateway(
        "prompts", "show", "support-answer@v2").stdout

    # Every step is audited under the acting key, not a CLI user.
    trail = audit_trail(gw.database_url, "prompt:support-answer")
    assert [action for action, *_ in trail] == [
        "prompt.push", "prompt.label", "prompt.push", "prompt.label", "prompt.promote", "prompt.rollback"]
    assert not any(actor.startswith("cli:") for *_, actor in trail)


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
    assert "support-answer" in author("prompts", "list", "--url", shipped.url, "--key", author.key,
                                      GATEWAY_URL="", GATEWAY_KEY="").stdout
