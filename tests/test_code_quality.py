"""The project's own rules, checked where CI will see them: ruff-clean, and the package and the
benchmarks fully type-checked (mypy in strict mode with pydantic's plugin; configuration in pyproject.toml)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _run(*argv: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *argv], cwd=REPO, capture_output=True, text=True, timeout=timeout)


def test_ruff_finds_nothing() -> None:
    result = _run("ruff", "check", "gateway", "tests", "benchmarks", timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_finds_no_type_errors() -> None:
    result = _run("mypy", "-p", "gateway", "-p", "benchmarks", timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
