"""The example CI workflow for prompts (.github/workflows/prompts.yml).

* actionlint passes on it (its syntax, expressions, action inputs, untrusted-input checks);
* its shape is what the docs promise: check on pull requests, push and evaluate on a staging
  gateway, push, evaluate and move ``staging`` on merge, and ``production`` only in a
  protected environment with an approver key;
* its shell steps run as written against a real gateway, with the environment the workflow
  gives them and no database URL, exactly as a runner would run them.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from test_prompts_e2e import ShippedGateway

from support.gateway_proc import REPO

WORKFLOW = REPO / ".github" / "workflows" / "prompts.yml"
BIN = Path(sys.executable).parent


def workflow() -> dict[str, Any]:
    loaded: dict[Any, Any] = yaml.safe_load(WORKFLOW.read_text())
    loaded["on"] = loaded.pop(True)  # YAML 1.1 reads the key `on` as true
    return loaded


def test_actionlint_passes() -> None:
    actionlint = shutil.which("actionlint", path=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    assert actionlint, "actionlint is in the test extra (pip install -e '.[test]')"
    result = subprocess.run([actionlint, "-no-color", str(WORKFLOW.relative_to(REPO))], cwd=REPO,
                            capture_output=True, text=True, timeout=60)
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


def test_the_workflow_does_what_the_docs_say() -> None:
    flow = workflow()
    assert flow["on"]["pull_request"]["paths"] == ["prompts/**"]
    assert flow["on"]["push"] == {"branches": ["main"], "paths": ["prompts/**"]}
    jobs = flow["jobs"]
    assert jobs["check"]["steps"][-1]["run"] == "gateway prompts check prompts"
    assert jobs["staging"]["needs"] == jobs["merge"]["needs"] == "check"
    assert jobs["staging"]["env"]["GATEWAY_KEY"] == "${{ secrets.STAGING_GATEWAY_AUTHOR_KEY }}"
    assert jobs["merge"]["env"]["GATEWAY_KEY"] == "${{ secrets.GATEWAY_AUTHOR_KEY }}"
    promote = jobs["promote"]
    assert promote["needs"] == "merge" and promote["environment"] == "production"
    assert promote["env"]["GATEWAY_KEY"] == "${{ secrets.GATEWAY_APPROVER_KEY }}"
    assert promote["steps"][-1]["run"].startswith('gateway prompts promote "$PROMPT" --from staging --to production')
    text = WORKFLOW.read_text()
    assert "DATABASE_URL" not in text and "postgresql" not in text, "runners never hold database credentials"


def step(job: str, step_id_or_name: str) -> str:
    for found in workflow()["jobs"][job]["steps"]:
        if step_id_or_name in (found.get("id"), found.get("name")):
            return str(found["run"])
    raise AssertionError(f"no step {step_id_or_name!r} in job {job!r}")


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("jq") is None, reason="the workflow's steps use jq, as GitHub's runners have it")
def test_the_workflow_steps_run_against_a_gateway(tmp_path: Path) -> None:
    root = tmp_path / "gateway"
    root.mkdir()
    gw = ShippedGateway(root, f"sqlite:///{root / 'gateway.db'}").start()
    try:
        def key(*roles: str) -> str:
            args = [arg for role in roles for arg in ("--role", role)]
            return gw.gateway("keys", "create", "--team", "support", *args).stdout.strip().splitlines()[-1]

        author, approver = key("author"), key("approver")
        runner = tmp_path / "runner"
        shutil.copytree(REPO / "prompts", runner / "prompts")
        output = runner / "github_output"
        output.touch()
        base = {"PATH": f"{BIN}:/usr/bin:/bin", "HOME": str(runner), "GATEWAY_URL": gw.url,
                "GITHUB_OUTPUT": str(output)}

        def run(script: str, **env: str) -> subprocess.CompletedProcess[str]:
            result = subprocess.run(["bash", "-e", "-c", script], cwd=runner, env={**base, **env},
                                    capture_output=True, text=True, timeout=300)
            assert author not in result.stdout + result.stderr and approver not in result.stdout + result.stderr
            return result

        # A pull request: every prompt pushed and its new version evaluated.
        pr_step = step("staging", "Push the prompts to the staging gateway and evaluate the new versions")
        result = run(pr_step, GATEWAY_KEY=author, MESSAGE="PR #7: shorter answers", TICKET="PR-7")
        assert result.returncode == 0, result.stderr
        assert result.stdout.count("PASSED: ") == 4, result.stdout
        # Run again (a new commit that did not change them): nothing new, nothing evaluated.
        again = run(pr_step, GATEWAY_KEY=author, MESSAGE="PR #7: typo", TICKET="PR-7")
        assert again.returncode == 0 and "PASSED" not in again.stdout

        # The merge: a changed prompt is pushed, evaluated and put on staging.
        prompt = runner / "prompts" / "support-answer" / "prompt.yaml"
        prompt.write_text(prompt.read_text().replace("Be brief and friendly.", "Be brief, friendly and precise."))
        merged = run(step("merge", "push"), GATEWAY_KEY=author, MESSAGE="Ask for precision (#7)\n\nLonger body",
                     TICKET="abc123")
        assert merged.returncode == 0, merged.stderr
        assert "support-answer@staging: (unset) → v2" in merged.stdout
        assert output.read_text() == 'prompts=["support-answer"]\n'
        shown = json.loads(gw.gateway("prompts", "show", "support-answer@v2", "--format", "json").stdout)
        assert (shown["message"], shown["ticket"]) == ("Ask for precision (#7)", "abc123")

        # Promotion: the author key is refused; the approver's (the protected environment's) moves it.
        promote = workflow()["jobs"]["promote"]["steps"][-1]["run"]
        refused = run(promote, GATEWAY_KEY=author, PROMPT="support-answer", TICKET="abc123")
        assert refused.returncode == 1 and "approver or admin role" in refused.stderr
        promoted = run(promote, GATEWAY_KEY=approver, PROMPT="support-answer", TICKET="abc123")
        assert promoted.returncode == 0, promoted.stderr
        assert "support-answer@production: (unset) → v2 (evaluation #" in promoted.stdout
    finally:
        gw.stop()


def test_the_docs_show_the_workflow_as_it_is() -> None:
    docs = (REPO / "docs" / "prompt-authors.md").read_text()
    section = docs[docs.index("## Remote mode and prompts from CI"):]
    excerpt = section[section.index("```yaml\n") + len("```yaml\n"):]
    excerpt = excerpt[:excerpt.index("```\n")]
    assert "gateway prompts promote" in excerpt
    assert excerpt in WORKFLOW.read_text(), "the docs' excerpt of the workflow drifted from the file"
