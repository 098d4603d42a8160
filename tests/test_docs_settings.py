"""The settings table in docs/operations.md is what `gateway config reference` prints, so the
operators' page cannot fall behind the code when a setting is added or its default changes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_operations_page_lists_every_setting_as_the_code_does() -> None:
    printed = subprocess.run(
        [sys.executable, "-m", "gateway", "config", "reference"], capture_output=True, text=True, check=True, cwd=ROOT
    ).stdout.strip()
    assert printed.count("\n") > 80  # the whole table, not an error line
    page = (ROOT / "docs" / "operations.md").read_text()
    assert printed in page, "docs/operations.md's settings table differs: paste `gateway config reference` there"
