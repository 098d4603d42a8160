"""``gateway budgets status`` — where each budget stands, read straight from Redis and the ledger.

The same reporter as ``GET /admin/budgets``: live counters from Redis when ``redis.url`` is
set (a gateway without Redis keeps them in its own memory, so the CLI then sums the ledger).
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any

import orjson
import typer
from rich.table import Table

from gateway.budgets import reporter_for
from gateway.catalog import Catalog
from gateway.cli.common import ConfigOption, console, err_console, run, settings_or_exit
from gateway.cli.remote import KeyOption, UrlOption, call, refuse_local_only, remote
from gateway.config.applied import catalog_in_force
from gateway.config.settings import Settings
from gateway.config.yamlfile import ConfigError
from gateway.storage import Database, open_database

app = typer.Typer(help="Team budgets.", no_args_is_help=True)


class Format(StrEnum):
    table = "table"
    json = "json"


async def _catalog(settings: Settings, db: Database) -> Catalog:
    return (await catalog_in_force(settings, db)).catalog


@app.command()
def status(
    team: Annotated[str | None, typer.Option(help="Only this team.")] = None,
    output: Annotated[Format, typer.Option("--format", help="table or json.")] = Format.table,
    config: ConfigOption = None,
    url: UrlOption = None,
    key: KeyOption = None,
) -> None:
    """Limit, spent, reserved, remaining and forecast (USD) for each budget this period."""
    api = remote(url, key)
    if api is not None:
        refuse_local_only("--config", config)
        rows = call(lambda: api.get("/admin/budgets", **({"team": team} if team else {})))
    else:
        rows = _local_rows(config, team)
    if output is Format.json:
        print(orjson.dumps(rows, option=orjson.OPT_INDENT_2).decode())
        return
    if not rows:
        console.print("No budgets configured" + (f" for team {team}." if team else "."), highlight=False)
        return
    table = Table("team", "scope", "period", "hard", "limit $", "spent $", "reserved $", "remaining $", "used %",
                  "forecast $", "resets at (UTC)", "source")
    for row in rows:
        table.add_row(
            row["team"], row["scope"], row["period"], "yes" if row["hard"] else "no",
            f"{row['limit_usd']:.2f}", f"{row['spent_usd']:.4f}", f"{row['reserved_usd']:.4f}",
            f"{row['remaining_usd']:.4f}", f"{row['used_pct']:.1f}", f"{row['forecast_usd']:.2f}",
            row["resets_at"].replace("T", " ").removesuffix("Z"), row["source"],
        )
    console.print(table)


def _local_rows(config: str | None, team: str | None) -> list[dict[str, Any]]:
    settings = settings_or_exit(config)

    async def fetch() -> list[dict[str, Any]]:
        db = await open_database(settings.database_url)
        wire = None
        try:
            reporter, wire = await reporter_for(settings, db, await _catalog(settings, db))
            return await reporter.statuses(team)
        finally:
            if wire is not None:
                await wire.close()
            await db.close()

    try:
        rows = run(fetch)
    except ConfigError as exc:
        for problem in exc.problems:
            err_console.print(f"[red]error:[/red] {problem}", highlight=False)
        raise typer.Exit(1) from None
    return rows
