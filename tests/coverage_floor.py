"""The coverage floor is for full runs: a partial run lifts it and says why.

pytest-cov fails any run whose total is under ``[tool.coverage.report] fail_under``, but a run
of some tests (paths or node ids given, ``-k``, ``-m``, ``--deselect``, ``--ignore``, ``--lf``,
``--sw``) covers less by design. Such a run still reports coverage; only the floor is lifted.
Outside CI a run that skipped tests because a service CI provides is missing (PostgreSQL,
Redis, Chromium: see conftest.py) is partial too; under CI a missing service fails the run.
``--no-cov`` turns coverage off altogether. Loaded with ``-p coverage_floor`` (pytest addopts).
"""

from __future__ import annotations

import os
from typing import Any

import pytest

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
# Skip reasons of the tests that need what CI provides (tests/conftest.py, test_reports_page.py,
# test_cache_replicas.py, test_embedding_model.py); other skips (wrk, the shared OpenAI spec) happen in CI too.
MISSING_SERVICE = (
    "is not reachable on", "chromium is not installed", "redis-server is not installed",
    "the real embedding model needs",
)


class CoverageFloor:
    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.floor: float | None = None
        self.lifted_because = ""

    def _cov_options(self) -> Any:
        plugin = self.config.pluginmanager.getplugin("_cov")
        if plugin is None or getattr(plugin, "_disabled", True) or not hasattr(plugin, "options"):
            return None
        return plugin.options

    def lift(self, reason: str) -> None:
        options = self._cov_options()
        if options is None or self.lifted_because:
            return
        self.floor = options.cov_fail_under
        if not self.floor:
            return
        options.cov_fail_under = None  # pytest-cov then neither checks nor announces the floor
        self.lifted_because = reason

    @pytest.hookimpl(trylast=True)
    def pytest_sessionstart(self, session: pytest.Session) -> None:
        config = self.config
        testpaths = {(config.rootpath / path).resolve() for path in config.getini("testpaths")}
        given = {(config.invocation_params.dir / arg).resolve() for arg in config.args}
        if given != testpaths:
            self.lift("tests were chosen by path or node id")
        for option, flag in (("ignore", "--ignore"), ("ignore_glob", "--ignore-glob"), ("lf", "--lf"),
                             ("keyword", "-k"), ("markexpr", "-m")):
            if config.getoption(option, None):
                self.lift(f"{flag} was given")

    def pytest_deselected(self, items: list[pytest.Item]) -> None:
        if items:
            self.lift(f"deselected: {len(items)}")

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.skipped and not IN_CI and any(reason in str(report.longrepr) for reason in MISSING_SERVICE):
            self.lift("tests were skipped for a missing service")

    @pytest.hookimpl(trylast=True)  # after pytest-cov's report
    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if self.lifted_because:
            terminalreporter.write_line(
                f"Coverage floor of {self.floor:g}% not enforced: partial run ({self.lifted_because}).",
                yellow=True,
            )


def pytest_configure(config: pytest.Config) -> None:
    config.pluginmanager.register(CoverageFloor(config), "coverage_floor_plugin")
