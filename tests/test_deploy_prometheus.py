"""deploy/prometheus: the alert rules load (`promtool check rules`), their unit tests pass
(`promtool test rules`), every alert is proven both to fire and to stay silent, and every
alert has a runbook paragraph in docs/operations.md."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
RULES = REPO / "deploy" / "prometheus" / "alerts.yaml"
RULE_TESTS = REPO / "deploy" / "prometheus" / "alerts_test.yaml"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool is not installed (Debian: apt-get install prometheus; .ci/run installs it)"
)


def alerts() -> list[dict[str, Any]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run([PROMTOOL, *args], capture_output=True, text=True, timeout=120, cwd=RULES.parent)


@needs_promtool
def test_promtool_check_rules() -> None:
    result = promtool("check", "rules", RULES.name)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alerts())} rules found" in result.stdout


@needs_promtool
def test_promtool_test_rules() -> None:
    result = promtool("test", "rules", RULE_TESTS.name)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_alert_is_tested_firing_and_silent() -> None:
    fired: set[str] = set()
    silent: set[str] = set()
    for case in yaml.safe_load(RULE_TESTS.read_text())["tests"]:
        for check in case.get("alert_rule_test", []):
            (fired if check.get("exp_alerts") else silent).add(check["alertname"])
    names = {rule["alert"] for rule in alerts()}
    assert names - fired == set(), "alerts never shown to fire"
    assert names - silent == set(), "alerts never shown to stay silent"


def test_every_alert_has_a_runbook_paragraph() -> None:
    docs = (REPO / "docs" / "operations.md").read_text()
    for rule in alerts():
        name = rule["alert"]
        anchor = f"alert-{name.lower()}"
        assert rule["annotations"]["runbook_url"] == f"docs/operations.md#{anchor}"
        assert re.search(rf'^#### <a id="{anchor}"></a>`{name}`$', docs, re.M), f"no runbook heading for {name}"
        section = docs.split(f'<a id="{anchor}"></a>', 1)[1].split("\n#### ", 1)[0]
        assert len(section.split()) >= 40, f"the runbook paragraph for {name} is too thin"
        assert rule["labels"]["severity"] in {"info", "warning", "critical"}
