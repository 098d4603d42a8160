"""The finance page: what it shows, who may see it, how a browser signs in, and a real
headless-Chromium screenshot of it."""

from __future__ import annotations

import os
import random
import re
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import IN_CI, FakeHandle

from gateway.config.settings import load_settings
from gateway.server.app import GatewayApp
from support.gateway_proc import ADMIN_KEY, GatewayConfig
from support.ledger import seed_rows
from support.png import decode
from support.servers import start_uvicorn_in_thread

TEAMS = ("search", "support-bot", "growth", "data-science", "internal-tools")
PROMPTS = ("summarise-ticket", "rank-results", "draft-reply", "classify-intent", None)
MODELS = (("smart", "gpt-4o"), ("fast", "gpt-4o-mini"), ("embed", "text-embedding-3-small"))
EVIL_TEAM = "<script>alert(1)</script>"


class FakeBudgets:
    """Stands in for the budget feature's ``BudgetReporter``."""

    def __init__(self) -> None:
        self.fail = False
        self.calls = 0
        resets = (datetime.now(UTC) + timedelta(days=9)).replace(hour=0, minute=0, second=0, microsecond=0)
        self.items: list[dict[str, Any]] = [
            {"team": "search", "period": "monthly", "hard": True, "limit_usd": 500.0, "spent_usd": 212.4,
             "reserved_usd": 6.2, "remaining_usd": 281.4, "forecast_usd": 390.0, "resets_at": resets},
            {"team": "support-bot", "period": "monthly", "hard": True, "limit_usd": 300.0, "spent_usd": 251.0,
             "reserved_usd": 12.0, "remaining_usd": 37.0, "forecast_usd": 355.0, "resets_at": resets},
            {"team": "growth", "scope": "alias:smart", "period": "daily", "hard": False, "limit_usd": 20.0,
             "spent_usd": 23.5, "reserved_usd": 0.0, "remaining_usd": 0.0, "forecast_usd": 31.0,
             "resets_at": resets.isoformat()},
            {"team": "no-limit", "period": "weekly", "limit_usd": 0},
        ]

    async def statuses(self, team: str | None = None) -> list[dict[str, Any]]:
        self.calls += 1
        if self.fail:
            raise ConnectionError("redis is away")
        return self.items


class _GatewayWithBudgets(GatewayApp):
    """The real gateway app, with a fake budget reporter attached once it has started."""

    def __init__(self, settings: Any, budgets: FakeBudgets | None) -> None:
        super().__init__(settings)
        self.budgets = budgets

    async def start(self) -> None:
        await super().start()
        assert self.runtime is not None
        self.runtime.budget_reporter = self.budgets


def _ledger_rows(days: int = 30) -> list[dict[str, Any]]:
    """A month of plausible traffic, deterministic: spend grows for some teams, cache saves some."""
    rng = random.Random(7)
    today = datetime.now(UTC).replace(hour=12, minute=0, second=0, microsecond=0)
    rows: list[dict[str, Any]] = []
    for back in range(days):
        ts = today - timedelta(days=back)
        for weight, team in enumerate(TEAMS):
            for n in range(3):
                alias, model = MODELS[(weight + n + back) % len(MODELS)]
                cost = int(rng.uniform(0.2, 1.0) * (len(TEAMS) - weight) * (1 + (days - back) / days) * 1e9)
                hit = n == 2 and weight % 2 == 0
                rows.append({
                    "ts": ts - timedelta(minutes=n), "request_id": f"seed-{back}-{weight}-{n}", "team": team,
                    "key_id": f"key_{weight:04d}", "alias": alias, "model": model,
                    "deployment": f"openai/{model}", "prompt_name": PROMPTS[(n + weight) % len(PROMPTS)],
                    "prompt_version": 1 + n, "kind": "cache_hit" if hit else "request",
                    "prompt_tokens": 900 + 10 * n, "completion_tokens": 200 + back,
                    "cost_nanos": 0 if hit else cost, "saved_nanos": cost if hit else 0,
                })
    rows.append({"ts": today, "request_id": "evil", "team": EVIL_TEAM, "cost_nanos": 1, "prompt_name": "<b>x</b>"})
    # The gateway's own evaluation runs are spent under prompts.eval_team ("admin").
    rows.append({"ts": today, "request_id": "eval-1", "team": "admin", "key_id": "eval", "cost_nanos": 5_000_000})
    return rows


@pytest.fixture(scope="module")
async def site(tmp_path_factory: pytest.TempPathFactory, fake_upstream: FakeHandle) -> Any:
    root = tmp_path_factory.mktemp("reports-page")
    database_url = f"sqlite:///{root / 'gateway.db'}"
    config = GatewayConfig(root=root, upstream=fake_upstream.url, database_url=database_url).write()
    await seed_rows(database_url, _ledger_rows())
    with pytest.MonkeyPatch.context() as env:
        env.setenv("GATEWAY_ADMIN_KEY", ADMIN_KEY)
        env.setenv("TEST_PROVIDER_KEY", "sk-test")
        settings = load_settings(config)
    budgets = FakeBudgets()
    app = _GatewayWithBudgets(settings, budgets)
    url, stop = start_uvicorn_in_thread(app, lifespan="on", startup_timeout=60)
    admin = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {ADMIN_KEY}"})

    def key(team: str, *roles: str) -> str:
        response = admin.post("/admin/keys", json={"team": team, "roles": list(roles)})
        response.raise_for_status()
        return str(response.json()["key"])

    site = {"url": url, "app": app, "budgets": budgets, "finance": key("finance", "finance"),
            "app_key": key("search", "app"), "key": key, "admin": admin}
    yield site
    admin.close()  # noqa: ASYNC212 - the fixture is async only to seed; nothing else runs on this loop now
    stop()


@pytest.fixture
def budgets(site: dict[str, Any]) -> Iterator[FakeBudgets]:
    fake: FakeBudgets = site["budgets"]
    items = list(fake.items)
    yield fake
    fake.fail = False
    fake.items = items
    site["app"].runtime.budget_reporter = fake


def _browser(site: dict[str, Any]) -> httpx.Client:
    return httpx.Client(base_url=site["url"], follow_redirects=False)


@contextmanager
def _signed_in(site: dict[str, Any], key: str | None = None) -> Iterator[httpx.Client]:
    with _browser(site) as browser:
        response = browser.post("/reports/login", data={"key": key or site["finance"]})
        assert response.status_code == 303, response.text
        yield browser


# -- content ------------------------------------------------------------------------------


def test_the_page_shows_spend_chart_tops_savings_and_exports(site: dict[str, Any], budgets: FakeBudgets) -> None:
    with _signed_in(site) as browser:
        page = browser.get("/reports")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    html = page.text
    for team in TEAMS:
        assert team in html
    for prompt in PROMPTS[:4]:
        assert prompt in html
    assert "gpt-4o-mini" in html and "text-embedding-3-small" in html
    assert "admin <small" in html and "(prompt evaluations)" in html  # evaluation traffic is named as such
    assert "Cache savings" in html and "cache savings ·" in html  # the card and the chart's line
    assert len(re.findall(r"<rect ", html)) >= 30 * len(TEAMS)  # one bar segment per team and day
    assert "<polyline" in html
    assert 'href="/reports/costs.csv?from=' in html
    # Self-contained and script-free: nothing to fetch, nothing to execute.
    assert "<script" not in html and "src=" not in html and "<link" not in html
    assert "script-src" not in page.headers["content-security-policy"]
    assert "default-src 'none'" in page.headers["content-security-policy"]


def test_names_from_the_ledger_are_escaped(site: dict[str, Any], budgets: FakeBudgets) -> None:
    with _signed_in(site) as browser:
        html = browser.get("/reports").text
    assert EVIL_TEAM not in html and "<b>x</b>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html


def test_budget_gauges_come_from_the_budget_reporter(site: dict[str, Any], budgets: FakeBudgets) -> None:
    with _signed_in(site) as browser:
        html = browser.get("/reports").text
        assert budgets.calls >= 1
        assert html.count('class="gauge ') == 3  # the budget without a limit has no gauge
        assert 'class="gauge ok"' in html and 'class="gauge warn"' in html and 'class="gauge over"' in html
        assert "$212.40 of $500.00 (44%)" in html
        assert "growth · alias:smart" in html and "forecast $31.00" in html
        assert html.count(" 00:00 UTC") == 3  # datetimes and ISO strings alike
        assert 'style="width: 100.0%"' in html  # over budget: the bar is full, the text says 118%
        assert "(118%)" in html

        budgets.fail = True
        down = browser.get("/reports")
        assert down.status_code == 200 and "Budget status is unavailable" in down.text
        assert "search" in down.text  # spend still renders from the ledger

        budgets.fail, budgets.items = False, []
        assert "No budgets configured." in browser.get("/reports").text


def test_without_a_budget_feature_the_page_says_so(site: dict[str, Any], budgets: FakeBudgets) -> None:
    site["app"].runtime.budget_reporter = None
    with _signed_in(site) as browser:
        html = browser.get("/reports").text
    assert "No budgets configured." in html and 'class="gauge ' not in html
    assert "search" in html


def test_the_period_can_be_chosen_and_is_validated(site: dict[str, Any], budgets: FakeBudgets) -> None:
    old = (datetime.now(UTC) - timedelta(days=400)).date()
    with _signed_in(site) as browser:
        empty = browser.get("/reports", params={"from": old.isoformat(), "to": (old + timedelta(days=7)).isoformat()})
        assert empty.status_code == 200 and "No spend recorded in this period." in empty.text
        assert browser.get("/reports", params={"from": "2020-01-01", "to": "2024-01-01"}).status_code == 400
        bad = browser.get("/reports", params={"from": "<img>"})
        assert bad.status_code == 400 and "<img>" not in bad.text


# -- signing in ---------------------------------------------------------------------------


def test_login_sets_a_strict_httponly_session_cookie_not_the_key(site: dict[str, Any]) -> None:
    browser = _browser(site)
    form = browser.get("/reports/login")
    assert form.status_code == 200 and 'type="password"' in form.text
    response = browser.post("/reports/login", data={"key": site["finance"]})
    assert response.status_code == 303 and response.headers["location"] == "/reports"
    cookie = response.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie.replace("Strict", "strict")
    assert "Path=/reports" in cookie and site["finance"] not in cookie
    assert browser.get("/reports").status_code == 200
    export = browser.get("/reports/costs.csv", params={"by": "team"})
    assert export.status_code == 200 and export.headers["content-type"].startswith("text/csv")
    assert export.text.splitlines()[0] == "team,requests,prompt_tokens,completion_tokens,cost_usd,saved_usd"

    assert browser.post("/reports/logout").status_code == 303
    # The old cookie is dead server-side too, not just forgotten by this browser.
    replay = _browser(site)
    replay.cookies.set("gw_reports_session", cookie.split(";")[0].split("=", 1)[1], path="/reports")
    assert replay.get("/reports").status_code == 303
    browser.close()
    replay.close()


def test_wrong_keys_do_not_sign_in(site: dict[str, Any]) -> None:
    with _browser(site) as browser:
        unknown = browser.post("/reports/login", data={"key": "gw-nope"})
        assert unknown.status_code == 401 and "set-cookie" not in unknown.headers
        app_key = browser.post("/reports/login", data={"key": site["app_key"]})
        assert app_key.status_code == 403 and "set-cookie" not in app_key.headers
        huge = browser.post("/reports/login", data={"key": "x" * 10_000})
        assert huge.status_code == 413
        forged = _browser(site)
        forged.cookies.set("gw_reports_session", "forged", path="/reports")
        assert forged.get("/reports").status_code == 303
        forged.close()


def test_a_login_link_works_once_and_revoking_the_key_ends_the_session(site: dict[str, Any]) -> None:
    key = site["key"]("finance", "finance")
    created = httpx.post(f"{site['url']}/admin/reports/login-links", headers={"Authorization": f"Bearer {key}"})
    assert created.status_code == 201
    link = created.json()["url"]
    assert link.startswith("/reports/login?token=") and key not in link
    with _browser(site) as browser:
        redeemed = browser.get(link)
        assert redeemed.status_code == 303 and redeemed.headers["referrer-policy"] == "no-referrer"
        assert browser.get("/reports").status_code == 200
        with _browser(site) as other:
            assert other.get(link).status_code == 401  # used up

        key_id = next(k["key_id"] for k in site["admin"].get("/admin/keys").json() if key.startswith(k["prefix"]))
        assert site["admin"].delete(f"/admin/keys/{key_id}").status_code == 204
        assert browser.get("/reports").status_code == 303


# -- a real browser -----------------------------------------------------------------------


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def test_the_page_renders_in_headless_chromium(site: dict[str, Any], budgets: FakeBudgets, tmp_path: Path) -> None:
    browser = _chromium()
    if browser is None:
        message = "chromium is not installed (apt-get install -y chromium)"
        if IN_CI:
            pytest.fail(message + "; CI must render the finance page")
        pytest.skip(message)
    link = httpx.post(
        f"{site['url']}/admin/reports/login-links", headers={"Authorization": f"Bearer {site['finance']}"}
    ).json()["url"]
    shot = tmp_path / "reports.png"
    profile = tmp_path / "profile"
    result = subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={profile}", "--window-size=1280,1600", "--hide-scrollbars",
         f"--screenshot={shot}", site["url"] + link],
        capture_output=True, text=True, timeout=90, env={**os.environ, "HOME": str(tmp_path)},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert shot.exists() and shot.stat().st_size > 20_000
    keep = os.environ.get("REPORTS_SCREENSHOT")
    if keep:
        shutil.copy(shot, keep)
    image = decode(shot.read_bytes())
    assert (image.width, image.height) == (1280, 1600)
    colours = image.colours(step=2)
    assert len(colours) > 200  # text, bars in eight colours, gauges: far from a blank page
    most = max(colours.values())
    assert most / sum(colours.values()) < 0.85
    assert image.pixel(10, 10) == (29, 35, 48)  # the dark header: the page itself, not the login form
