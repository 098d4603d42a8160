"""``gateway keys create|list|revoke`` — straight against storage, like the admin API."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import orjson
import typer
from rich.table import Table

from gateway.auth import ROLES, KeyRecord, KeyStore
from gateway.cli.common import ConfigOption, console, err_console, fail, settings_or_exit, with_database
from gateway.cli.remote import (
    KeyOption,
    RemoteError,
    UrlOption,
    call,
    parse_time,
    refuse_local_only,
    remote,
    segment,
    utc,
)
from gateway.config.applied import catalog_in_force
from gateway.config.yamlfile import ConfigError
from gateway.redact import redact_url
from gateway.storage import Database

app = typer.Typer(help="Team API keys.", no_args_is_help=True)


@app.command()
def create(
    team: Annotated[str, typer.Option(help="The team the key belongs to.")],
    role: Annotated[list[str] | None, typer.Option(help=f"Role(s): {', '.join(ROLES)}. Repeatable.")] = None,
    name: Annotated[str, typer.Option(help="A label for humans.")] = "",
    force: Annotated[bool, typer.Option("--force", help="Create it even if no policy names the team (yet).")] = False,
    config: ConfigOption = None,
    url: UrlOption = None,
    key: KeyOption = None,
) -> None:
    """Create a key. The key itself is printed once, alone on the last line."""
    api = remote(url, key)
    if api is not None:
        # The gateway checks the team against the policies it serves (unless --force).
        refuse_local_only("--config", config)
        body = {"team": team, "roles": role or ["app"], "name": name, "check_team": not force}
        made = call(lambda: api.post("/admin/keys", body))
        console.print(f"Created {made['key_id']} for team {team} with roles {','.join(made['roles'])}. Store it now: "
                      "it is not shown again.", highlight=False)
        print(made["key"])
        return
    settings = settings_or_exit(config)
    database = settings.database_url
    sqlite_file = Path(database.removeprefix("sqlite:///")) if database.startswith("sqlite:///") else None
    new_database = sqlite_file is not None and not sqlite_file.exists()
    teams_file = settings.resolve_path(settings.policies_dir) / "teams.yaml"

    unchecked: list[str] = []

    async def create_key(db: Database) -> tuple[str, str, str] | list[str]:
        # A key for a team no policy names is refused at every request (401/403 with no hint):
        # say so now, while the person who made the typo is looking.
        if not force:
            try:
                catalog = (await catalog_in_force(settings, db)).catalog
            except ConfigError as exc:
                if not teams_file.is_file():
                    return []  # no policy files here at all (the wrong folder?): no team is known
                # Policy files being edited (or broken) must not stop an operator from issuing a
                # key: the servers keep serving what they loaded. Say the team went unchecked.
                unchecked.append(str(exc).splitlines()[0])
            else:
                if catalog.team(team) is None:
                    return sorted(catalog.teams)
        created = await KeyStore(db).create(team, tuple(role or ["app"]), name)
        return created.record.key_id, ",".join(created.record.roles), created.secret

    try:
        outcome = with_database(settings, create_key)
    except ValueError as exc:
        fail(str(exc))
        return
    where = f"database {redact_url(database)}"
    if new_database:
        err_console.print(f"[yellow]warning:[/] there was no database at {sqlite_file}: created a new, empty one. "
                          "Run this in the gateway's folder, or pass --config, to use the gateway's own.",
                          highlight=False)
    if isinstance(outcome, list):
        known = ", ".join(outcome) or "none"
        fail(f"no policy names the team {team!r} (policies: {teams_file}; {where}; known teams: {known}). "
             "Keys for it would be refused; add the team to the policy, or pass --force if it is coming.")
        return
    if unchecked:
        err_console.print(f"[yellow]warning:[/] could not check that a policy names the team {team!r}: "
                          f"{unchecked[0]}", highlight=False)
    key_id, roles, secret = outcome
    console.print(f"Created {key_id} for team {team} with roles {roles}. Store it now: it is not shown again.",
                  highlight=False)
    print(secret)


@app.command("list")
def list_keys(
    team: Annotated[str | None, typer.Option(help="Only this team's keys.")] = None,
    all_keys: Annotated[bool, typer.Option("--all", help="Include revoked keys.")] = False,
    output: Annotated[str, typer.Option("--format", help="table or json.")] = "table",
    config: ConfigOption = None,
    url: UrlOption = None,
    key: KeyOption = None,
) -> None:
    """List keys (ids and prefixes only; keys themselves are never stored)."""
    api = remote(url, key)
    if api is not None:
        refuse_local_only("--config", config)
        params = {"include_revoked": "true" if all_keys else "false", **({"team": team} if team else {})}
        found = call(lambda: api.get("/admin/keys", **params))
        records = [KeyRecord(key_id=r["key_id"], prefix=r["prefix"], team=r["team"], roles=tuple(r["roles"]),
                             name=r["name"], created_at=parse_time(r["created_at"]),
                             revoked_at=parse_time(r["revoked_at"]) if r["revoked_at"] else None) for r in found]
    else:
        settings = settings_or_exit(config)

        async def fetch(db: Database) -> list[KeyRecord]:
            return await KeyStore(db).list(team, all_keys)

        records = with_database(settings, fetch)
    if output == "json":
        print(orjson.dumps([
            {"key_id": r.key_id, "prefix": r.prefix, "team": r.team, "roles": list(r.roles), "name": r.name,
             "created_at": utc(r.created_at).isoformat(),
             "revoked_at": utc(r.revoked_at).isoformat() if r.revoked_at else None}
            for r in records
        ], option=orjson.OPT_INDENT_2).decode())
        return
    table = Table("key id", "prefix", "team", "roles", "name", "created", "revoked")
    table.columns[0].no_wrap = True
    for record in records:
        table.add_row(
            record.key_id, record.prefix + "…", record.team, ",".join(record.roles), record.name,
            record.created_at.strftime("%Y-%m-%d %H:%M"),
            record.revoked_at.strftime("%Y-%m-%d %H:%M") if record.revoked_at else "",
        )
    console.print(table)


@app.command()
def revoke(key_id: str, config: ConfigOption = None, url: UrlOption = None, key: KeyOption = None) -> None:
    """Revoke a key by id; replicas stop accepting it within the key cache TTL."""
    api = remote(url, key)
    if api is not None:
        refuse_local_only("--config", config)
        try:
            api.request("DELETE", f"/admin/keys/{segment(key_id)}")
        except RemoteError as exc:
            fail(f"no active key {key_id!r}" if exc.status == 404 else exc.message)
        console.print(f"Revoked {key_id}.")
        return
    settings = settings_or_exit(config)

    async def do_revoke(db: Database) -> bool:
        return await KeyStore(db).revoke(key_id)

    if not with_database(settings, do_revoke):
        fail(f"no active key {key_id!r}")
    console.print(f"Revoked {key_id}.")
