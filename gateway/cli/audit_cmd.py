"""``gateway audit list|verify`` — read and check the tamper-evident audit log."""

from __future__ import annotations

import csv
import dataclasses
import sys
from datetime import UTC, datetime
from typing import Annotated

import orjson
import typer
from rich.table import Table

from gateway.audit import AuditEntry, AuditLog, ChainBreak
from gateway.cli.common import ConfigOption, console, fail, settings_or_exit, with_database
from gateway.cli.remote import KeyOption, UrlOption, call, parse_time, refuse_local_only, remote, utc
from gateway.storage import Database

app = typer.Typer(help="The audit log of every change to traffic or access.", no_args_is_help=True)

# The admin API's page-size ceiling: local mode lists every entry, and so does remote mode up to this.
_REMOTE_LIMIT = 100_000


def _since(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        fail(f"--since: not an ISO date or time: {value!r}")
        raise
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


@app.command("list")
def list_entries(
    since: Annotated[str | None, typer.Option(help="ISO date/time (UTC if no offset).")] = None,
    target: Annotated[str | None, typer.Option(help="Target or target prefix, e.g. prompt:support-answer.")] = None,
    actor: Annotated[str | None, typer.Option(help="Key id or team of the actor.")] = None,
    action: Annotated[str | None, typer.Option(help="e.g. prompt.promote, key.create, policy.apply.")] = None,
    output: Annotated[str, typer.Option("--format", help="table, json or csv.")] = "table",
    config: ConfigOption = None,
    url: UrlOption = None,
    key: KeyOption = None,
) -> None:
    """List audit entries, oldest first."""
    since_at = _since(since)
    api = remote(url, key)
    if api is not None:
        refuse_local_only("--config", config)
        filters = {"since": since_at.isoformat() if since_at else None, "target": target, "actor": actor,
                   "action": action, "limit": str(_REMOTE_LIMIT)}
        found = call(lambda: api.get("/admin/audit", **{k: v for k, v in filters.items() if v is not None}))
        entries = [AuditEntry(**{**row, "ts": parse_time(row["ts"])}) for row in found]
    else:
        settings = settings_or_exit(config)

        async def fetch(db: Database) -> list[AuditEntry]:
            return await AuditLog(db).list(since=since_at, target=target, actor=actor, action=action)

        # Times with their offset, as the admin API writes them (SQLite hands back naive UTC).
        entries = [dataclasses.replace(e, ts=utc(e.ts)) for e in with_database(settings, fetch)]
    if output == "json":
        print(orjson.dumps([e.as_dict() for e in entries], option=orjson.OPT_INDENT_2).decode())
    elif output == "csv":
        writer = csv.writer(sys.stdout)
        writer.writerow(["seq", "ts", "actor_key_id", "actor_team", "action", "target", "before", "after",
                         "reason", "ticket", "hash"])
        for e in entries:
            writer.writerow([e.seq, e.ts.isoformat(), e.actor_key_id, e.actor_team, e.action, e.target,
                             orjson.dumps(e.before).decode(), orjson.dumps(e.after).decode(), e.reason or "",
                             e.ticket or "", e.hash])
    elif output == "table":
        table = Table("#", "time (UTC)", "actor", "action", "target", "reason", "ticket")
        for e in entries:
            table.add_row(str(e.seq), e.ts.strftime("%Y-%m-%d %H:%M:%S"), f"{e.actor_key_id} ({e.actor_team})",
                          e.action, e.target, e.reason or "", e.ticket or "")
        console.print(table)
    else:
        fail("--format must be table, json or csv")


@app.command()
def verify(config: ConfigOption = None, url: UrlOption = None, key: KeyOption = None) -> None:
    """Check the hash chain; exit 1 naming the first broken link."""
    api = remote(url, key)
    if api is not None:
        refuse_local_only("--config", config)
        result = call(lambda: api.get("/admin/audit/verify"))
        if not result["ok"]:
            fail(f"audit log broken at entry {result['broken_at']}: {result['problem']}")
        console.print(f"ok: {result['entries']} entries, chain intact")
        return
    settings = settings_or_exit(config)

    async def check(db: Database) -> tuple[ChainBreak | None, int]:
        log = AuditLog(db)
        return await log.verify(), len(await log.list())

    broken, count = with_database(settings, check)
    if broken is not None:
        fail(f"audit log broken at entry {broken.seq}: {broken.problem}")
    console.print(f"ok: {count} entries, chain intact")
