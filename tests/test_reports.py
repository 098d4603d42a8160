"""Cost reports: grouping and period rules on both backends, the CSV that sums to the ledger,
the CLI, and the finance role on the admin API."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import FakeHandle, make_gateway
from openai import OpenAI
from sqlalchemy import func, select

from gateway.errors import InvalidRequest
from gateway.reports import CostQuery, Period, cost_report, exact_usd, money, parse_by, to_csv
from gateway.storage import open_database
from gateway.storage.schema import ledger
from support.gateway_proc import ADMIN_KEY, GatewayProcess
from support.ledger import new_key, seed_rows, wait_for_rows


def _ts(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


# March 2001 is this module's own corner of the shared test databases: no other rows live there.
SEEDED: list[dict[str, Any]] = [
    {"ts": _ts("2001-02-28 23:59:59.999999"), "team": "a", "cost_nanos": 10**12, "request_id": "before"},
    {"ts": _ts("2001-03-01 00:00:00"), "team": "a", "alias": "chat", "model": "gpt-4o", "prompt_name": "greet",
     "cost_nanos": 1_000_000_001, "prompt_tokens": 100, "completion_tokens": 20, "request_id": "first"},
    {"ts": _ts("2001-03-01 23:59:59.999999"), "team": "a", "alias": "chat", "model": "gpt-4o", "cost_nanos": 5,
     "prompt_tokens": 1, "completion_tokens": 1, "request_id": "late"},
    {"ts": _ts("2001-03-02 12:00:00"), "team": "b", "alias": "chat", "model": "gpt-4o", "kind": "cache_hit",
     "saved_nanos": 300_000_000, "prompt_tokens": 50, "completion_tokens": 10, "request_id": "hit"},
    {"ts": _ts("2001-03-03 23:59:59.999999"), "team": "b", "alias": "mini", "model": "gpt-4o-mini",
     "prompt_name": "=cmd()", "cost_nanos": 7, "kind": "shadow", "request_id": "shadow"},
    {"ts": _ts("2001-03-03 08:00:00"), "team": "b", "kind": "rejected", "status": 429,
     "error_code": "budget_exceeded", "request_id": "rejected"},
    {"ts": _ts("2001-03-04 00:00:00"), "team": "a", "cost_nanos": 10**12, "request_id": "after"},
]
MARCH = Period(date(2001, 3, 1), date(2001, 3, 4))


@pytest.fixture(scope="module")
async def seeded(database_url: str) -> str:
    await seed_rows(database_url, [{**row, "key_id": "key_seed"} for row in SEEDED])
    return database_url


# -- periods and dimensions ---------------------------------------------------------------


def test_period_parsing_and_defaults() -> None:
    assert Period.parse("2025-01-01", "2025-02-01") == Period(date(2025, 1, 1), date(2025, 2, 1))
    assert Period.parse(None, None, today=date(2025, 5, 17)) == Period(date(2025, 5, 1), date(2025, 5, 18))
    assert Period.last_days(30, today=date(2025, 5, 17)) == Period(date(2025, 4, 18), date(2025, 5, 18))
    for start, end in (("2025-02-01", "2025-02-01"), ("2025-03-01", "2025-02-01"), ("01/02/2025", None),
                       ("1990-01-01", "2025-01-01")):
        with pytest.raises(InvalidRequest):
            Period.parse(start, end)


def test_by_is_checked() -> None:
    assert parse_by("team, Day,team") == ("team", "day")
    assert parse_by(["team,alias", "model"]) == ("team", "alias", "model")
    with pytest.raises(InvalidRequest, match="Unknown 'by' dimension"):
        parse_by("team,colour")


def test_money_formats_are_exact_where_it_matters() -> None:
    assert exact_usd(1_000_000_001) == "1.000000001"
    assert exact_usd(1500) == "0.000001500"
    assert exact_usd(0) == "0.000000000"
    assert money(1_234_567_890_000) == "$1,234.57"
    assert money(42_000_000) == "$0.0420"
    assert money(1500) == "$0.000002"
    assert money(1) == "<$0.000001" and money(0) == "$0.00"


# -- the query, on SQLite and PostgreSQL ---------------------------------------------------


async def test_days_are_utc_from_inclusive_to_exclusive(seeded: str) -> None:
    db = await open_database(seeded)
    try:
        report = await cost_report(db, CostQuery(MARCH, by=("day",)))
    finally:
        await db.close()
    assert [(line.group["day"], line.requests, line.cost_nanos) for line in report.lines] == [
        ("2001-03-01", 2, 1_000_000_006),
        ("2001-03-02", 1, 0),
        ("2001-03-03", 2, 7),
    ]
    assert report.totals.requests == 5
    assert report.totals.cost_nanos == 1_000_000_013
    assert report.totals.saved_nanos == 300_000_000
    assert (report.totals.prompt_tokens, report.totals.completion_tokens) == (151, 31)


async def test_grouping_filters_and_ordering(seeded: str) -> None:
    db = await open_database(seeded)
    try:
        by_team_kind = await cost_report(db, CostQuery(MARCH, by=("team", "kind")))
        top_prompts = await cost_report(db, CostQuery(MARCH, by=("prompt",), order="cost", skip_empty=True))
        only_b = await cost_report(db, CostQuery(MARCH, by=("alias", "model"), team="b"))
        nobody = await cost_report(db, CostQuery(MARCH, by=("team",), key="key_nobody"))
    finally:
        await db.close()
    assert [(ln.group["team"], ln.group["kind"], ln.requests) for ln in by_team_kind.lines] == [
        ("a", "request", 2), ("b", "cache_hit", 1), ("b", "rejected", 1), ("b", "shadow", 1),
    ]
    assert [(ln.group["prompt"], ln.cost_nanos) for ln in top_prompts.lines] == [
        ("greet", 1_000_000_001), ("=cmd()", 7)
    ]
    assert top_prompts.totals.requests == 5  # totals cover the period, not just the lines shown
    # Where NULL sorts differs between SQLite and PostgreSQL, so compare as a set.
    assert {(ln.group["alias"], ln.group["model"], ln.requests) for ln in only_b.lines} == {
        (None, None, 1), ("chat", "gpt-4o", 1), ("mini", "gpt-4o-mini", 1),
    }
    assert only_b.totals.saved_nanos == 300_000_000 and only_b.filters == {"team": "b"}
    assert nobody.lines == [] and nobody.totals.requests == 0 and nobody.totals.cost_nanos == 0


async def test_csv_sums_exactly_to_the_totals_and_stays_text_in_spreadsheets(seeded: str) -> None:
    db = await open_database(seeded)
    try:
        report = await cost_report(db, CostQuery(MARCH, by=("day", "team", "prompt")))
    finally:
        await db.close()
    rows = list(csv.DictReader(io.StringIO(to_csv(report))))
    assert sum(Decimal(r["cost_usd"]) for r in rows) == Decimal("1.000000013")
    assert sum(Decimal(r["saved_usd"]) for r in rows) == Decimal("0.300000000")
    assert sum(int(r["requests"]) for r in rows) == 5
    assert "'=cmd()" in [r["prompt"] for r in rows]  # a formula-looking name is quoted as text


# -- the admin API against a running gateway, both backends --------------------------------


async def test_csv_export_sums_to_the_ledger_total(backend_gateway: GatewayProcess, fake: FakeHandle) -> None:
    proc = backend_gateway
    key_id, key = new_key(proc.url, ADMIN_KEY, "alpha")
    client = OpenAI(base_url=f"{proc.url}/v1", api_key=key, max_retries=0)
    for i in range(12):
        client.chat.completions.create(
            model="fake-chat" if i % 3 else "fake-retry", messages=[{"role": "user", "content": f"cost {i}" * i}]
        )
    client.embeddings.create(model="fake-embed", input=["one", "two"])
    database_url = proc.config.database_url
    await wait_for_rows(database_url, ledger.c.key_id == key_id, until=lambda rows: len(rows) == 13)

    today = datetime.now(UTC).date()
    period = {"from": (today - timedelta(days=1)).isoformat(), "to": (today + timedelta(days=2)).isoformat()}
    _, finance = new_key(proc.url, ADMIN_KEY, "finance", "finance")
    http = httpx.AsyncClient(base_url=proc.url, headers={"Authorization": f"Bearer {finance}"})
    response = await http.get(
        "/admin/reports/costs", params={**period, "by": "team,alias,model,prompt,day", "format": "csv", "key": key_id}
    )
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/csv")
    assert "attachment" in response.headers["content-disposition"]
    rows = list(csv.DictReader(io.StringIO(response.text)))
    assert {r["alias"] for r in rows} == {"fake-chat", "fake-retry", "fake-embed"}

    db = await open_database(database_url, run_migrations=False)
    try:
        async with db.engine.connect() as conn:
            total_nanos, count = (
                await conn.execute(
                    select(func.sum(ledger.c.cost_nanos), func.count()).where(
                        ledger.c.key_id == key_id,
                        ledger.c.ts >= datetime.fromisoformat(period["from"]).replace(tzinfo=UTC),
                        ledger.c.ts < datetime.fromisoformat(period["to"]).replace(tzinfo=UTC),
                    )
                )
            ).one()
    finally:
        await db.close()
    assert count == 13 and int(total_nanos) > 0
    assert sum(Decimal(r["cost_usd"]) for r in rows) == Decimal(int(total_nanos)) / 10**9
    assert sum(int(r["requests"]) for r in rows) == count

    as_json = (await http.get("/admin/reports/costs", params={**period, "by": "day", "key": key_id})).json()
    await http.aclose()
    assert as_json["totals"]["cost_nanos"] == int(total_nanos) and as_json["totals"]["requests"] == 13
    assert as_json["by"] == ["day"] and as_json["filters"] == {"key": key_id}


def test_reports_need_the_finance_role(gateway: GatewayProcess, team_keys: dict[str, str]) -> None:
    app_key = team_keys["alpha"]
    _, finance = new_key(gateway.url, ADMIN_KEY, "finance", "finance")
    with httpx.Client(base_url=gateway.url, follow_redirects=False) as http:
        def as_(key: str | None) -> dict[str, str]:
            return {"Authorization": f"Bearer {key}"} if key else {}

        assert http.get("/admin/reports/costs").status_code == 401
        assert http.get("/admin/reports/costs", headers=as_(app_key)).status_code == 403
        assert http.get("/admin/reports/costs", headers=as_(app_key)).json()["error"]["code"] == "insufficient_role"
        assert http.get("/reports", headers=as_(app_key)).status_code == 403
        assert http.get("/reports/costs.csv", headers=as_(app_key)).status_code == 403
        assert http.post("/admin/reports/login-links", headers=as_(app_key)).status_code == 403
        refused = http.post("/reports/login", data={"key": app_key})
        assert refused.status_code == 403 and "set-cookie" not in refused.headers

        assert http.get("/reports").status_code == 303  # a browser without a session goes to the form
        assert http.get("/reports").headers["location"] == "/reports/login"
        for key in (finance, ADMIN_KEY):
            assert http.get("/admin/reports/costs", headers=as_(key)).status_code == 200
            assert http.get("/reports", headers=as_(key)).status_code == 200
        bad = http.get("/admin/reports/costs", params={"by": "colour"}, headers=as_(finance))
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "by"
        assert http.get("/admin/reports/costs", params={"from": "2025-13-01"}, headers=as_(finance)).status_code == 400


# -- the CLI ------------------------------------------------------------------------------


async def test_cli_report_in_every_format(tmp_path: Path, fake: FakeHandle) -> None:
    database_url = f"sqlite:///{tmp_path / 'gateway.db'}"
    await seed_rows(database_url, SEEDED)
    proc = make_gateway(tmp_path, fake.url, database_url)  # config only: the CLI reads storage itself
    span = ("--from", "2001-03-01", "--to", "2001-03-04")

    out = proc.cli("report", "costs", *span, "--by", "team,day", "--format", "csv").stdout
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [(r["team"], r["day"]) for r in rows] == [
        ("a", "2001-03-01"), ("b", "2001-03-02"), ("b", "2001-03-03")
    ]
    assert sum(Decimal(r["cost_usd"]) for r in rows) == Decimal("1.000000013")

    data = json.loads(proc.cli("report", "costs", *span, "--by", "kind", "--format", "json").stdout)
    assert data["from"] == "2001-03-01" and data["to"] == "2001-03-04"
    assert {r["kind"]: r["requests"] for r in data["rows"]} == {
        "request": 2, "cache_hit": 1, "rejected": 1, "shadow": 1
    }
    assert data["totals"]["cost_nanos"] == 1_000_000_013 and data["totals"]["saved_usd"] == 0.3

    table = proc.cli("report", "costs", *span, "--by", "team,alias,model,prompt,day").stdout
    assert "greet" in table and "gpt-4o-mini" in table and "$1.00" in table and "$0.30" in table
