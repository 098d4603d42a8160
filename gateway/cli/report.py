"""``gateway report costs`` — the cost report, straight from the ledger in storage.

The same query as ``GET /admin/reports/costs`` and the ``/reports`` page, so the three can
never disagree.
"""

from __future__ import annotations

import sys
from enum import StrEnum
from typing import Annotated

import typer

from gateway.cli.common import ConfigOption, console, fail, run, settings_or_exit
from gateway.cli.remote import UrlOption, call, refuse_local_only, remote
from gateway.errors import GatewayError
from gateway.reports import (
    DIMENSIONS,
    CostQuery,
    CostReport,
    Period,
    cost_report,
    from_json_dict,
    parse_by,
    to_csv,
    to_json,
    to_table,
)
from gateway.storage import open_database

app = typer.Typer(help="Reports for finance.", no_args_is_help=True)


class Format(StrEnum):
    table = "table"
    csv = "csv"
    json = "json"


@app.command()
def costs(
    from_: Annotated[
        str | None,
        typer.Option("--from", help="First UTC date, inclusive (YYYY-MM-DD). Default: first of this month."),
    ] = None,
    to: Annotated[
        str | None, typer.Option("--to", help="UTC date to stop before, exclusive (YYYY-MM-DD). Default: tomorrow.")
    ] = None,
    by: Annotated[str, typer.Option(help=f"Group by, comma-separated: {', '.join(DIMENSIONS)}.")] = "team",
    output: Annotated[Format, typer.Option("--format", help="table, csv or json.")] = Format.table,
    team: Annotated[str | None, typer.Option(help="Only this team's spend.")] = None,
    key: Annotated[str | None, typer.Option(help="Only this key id's spend.")] = None,
    config: ConfigOption = None,
    url: UrlOption = None,
    api_key: Annotated[str | None, typer.Option(
        "--api-key", envvar="GATEWAY_KEY", show_default=False,
        help="The API key remote mode acts with (--key here filters by key id).")] = None,
) -> None:
    """Spend, tokens and cache savings for a period, grouped as asked. CSV and JSON go to stdout."""
    try:
        spec = CostQuery(Period.parse(from_, to), by=parse_by(by), team=team, key=key)
    except GatewayError as exc:
        fail(exc.message)
        return
    api = remote(url, api_key)
    if api is not None:
        refuse_local_only("--config", config)
        params = {"from": spec.period.start.isoformat(), "to": spec.period.end.isoformat(), "by": ",".join(spec.by),
                  **({"team": team} if team else {}), **({"key": key} if key else {})}
        report = from_json_dict(call(lambda: api.get("/admin/reports/costs", **params)))
    else:
        settings = settings_or_exit(config)

        async def fetch() -> CostReport:
            db = await open_database(settings.database_url)
            try:
                return await cost_report(db, spec)
            finally:
                await db.close()

        report = run(fetch)
    if output is Format.csv:
        sys.stdout.write(to_csv(report))
    elif output is Format.json:
        sys.stdout.buffer.write(to_json(report) + b"\n")
    else:
        console.print(to_table(report))
