"""``gateway prompts check PATH...``: prompt files validated without pushing (for pull requests).

In process (no gateway, no database): the checks are push's, and a config, when one is found,
adds the model alias check against the policy files.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from gateway.cli import app as cli_app
from support.gateway_proc import REPO

GOOD = "name: {name}\nmodel: {model}\nmessages:\n  - role: user\n    content: hi\n"


def check(*args: str, cwd: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[int, str]:
    monkeypatch.chdir(cwd)
    monkeypatch.delenv("GATEWAY_CONFIG", raising=False)
    result = CliRunner().invoke(cli_app, ["prompts", "check", *args])
    return result.exit_code, result.output


def test_the_shipped_prompts_pass(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    shutil.copytree(REPO / "prompts", tmp_path / "prompts")
    code, output = check("prompts", cwd=tmp_path, monkeypatch=monkeypatch)
    assert code == 0, output
    assert "ok: prompts/support-answer (support-answer, 3 golden cases, sha256 " in output
    assert output.rstrip().endswith("4 prompt files valid.")


def test_every_problem_of_every_file_is_listed_and_nothing_is_pushed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "good.yaml").write_text(GOOD.format(name="good", model="mock"))
    (tmp_path / "bad.yaml").write_text(
        "name: bad\nmodel: mock\nmessages:\n  - role: user\n    content: '{{ missing }} {% if %}'\n"
        "  - role: nobody\n    content: hi\n")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "prompt.yaml").write_text("name: broken\nmodel: mock\ndataset: nowhere.jsonl\n"
                                                     "messages: [{role: user, content: hi}]\n")
    code, output = check("good.yaml", "bad.yaml", "broken", "missing.yaml", cwd=tmp_path, monkeypatch=monkeypatch)
    assert code == 1
    lines = output.strip().splitlines()
    assert "ok: good.yaml (good, 0 golden cases, sha256 " in lines[0]
    assert any(line.startswith("error: bad.yaml:6: messages.1.role") for line in lines), output
    assert any(line.startswith("error: broken/prompt.yaml:3: dataset: cannot read ") for line in lines), output
    assert "error: missing.yaml: cannot read: No such file or directory" in lines
    assert lines[-1] == "error: 3 of 4 prompt files have problems."
    assert not (tmp_path / ".gateway").exists(), "no database was opened"


def test_with_a_config_the_model_alias_is_checked_against_the_policies(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shutil.copy(REPO / "gateway.yaml", tmp_path / "gateway.yaml")
    shutil.copytree(REPO / "policies", tmp_path / "policies")
    aliases = yaml.safe_load((REPO / "policies" / "models.yaml").read_text())["aliases"]
    embedding = next(name for name, alias in aliases.items() if alias.get("kind") == "embedding")
    (tmp_path / "prompts").mkdir()
    (tmp_path / "prompts" / "ok.yaml").write_text(GOOD.format(name="ok", model="mock"))
    (tmp_path / "prompts" / "typo.yaml").write_text(GOOD.format(name="typo", model="mokc"))
    (tmp_path / "prompts" / "embed.yaml").write_text(GOOD.format(name="embed", model=embedding))
    code, output = check("prompts", cwd=tmp_path, monkeypatch=monkeypatch)
    assert code == 1
    assert "error: prompts/typo.yaml:2: model: unknown model alias 'mokc'" in output
    assert f"error: prompts/embed.yaml:2: model: {embedding!r} is an embedding model; prompts need a chat model" \
        in output
    assert "ok: prompts/ok.yaml" in output
    assert not (tmp_path / ".gateway").exists(), "no database was opened"

    # Without a config the alias cannot be known: only the file itself is checked.
    (tmp_path / "gateway.yaml").unlink()
    code, output = check("prompts/typo.yaml", cwd=tmp_path, monkeypatch=monkeypatch)
    assert code == 0, output


def test_no_prompt_files_is_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "empty").mkdir()
    code, output = check("empty", cwd=tmp_path, monkeypatch=monkeypatch)
    assert (code, output.strip()) == (1, "error: no prompt files found in empty")


@pytest.mark.parametrize("where", ["a folder without a config", "the repository, with its gateway.yaml"])
def test_the_check_loads_no_storage_or_request_path_code(where: str, tmp_path: Path) -> None:
    """Every pull request of prompts runs it: in a fresh interpreter, it imports neither the
    database layer nor the eval runner (the whole request path), ~0.1 s of start-up each."""
    if where.startswith("a folder"):
        shutil.copytree(REPO / "prompts", tmp_path / "prompts")
        cwd = tmp_path
    else:
        cwd = REPO
    env = {k: v for k, v in os.environ.items() if k != "GATEWAY_CONFIG"}
    probe = (
        "import sys\n"
        "from gateway.cli import main\n"
        "try:\n"
        "    main()\n"
        "except SystemExit as exit:\n"
        "    heavy = ('sqlalchemy', 'gateway.prompts.evals.runner', 'gateway.core')\n"
        "    loaded = sorted(m for m in heavy if m in sys.modules)\n"
        "    print('loaded:', loaded, 'exit:', exit.code)\n"
    )
    result = subprocess.run([sys.executable, "-c", probe, "prompts", "check", "prompts"], cwd=cwd, env=env,
                            capture_output=True, text=True, timeout=60)
    assert "4 prompt files valid." in result.stdout, result.stdout + result.stderr
    assert result.stdout.rstrip().endswith("loaded: [] exit: 0"), result.stdout + result.stderr
