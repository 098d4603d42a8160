"""``gateway policies apply|status`` — validate, diff, record and roll out the policy files."""

from __future__ import annotations

import getpass
from pathlib import Path
from typing import Annotated

import typer

from gateway.audit import Actor
from gateway.cli.common import ConfigOption, console, fail_config, settings_or_exit, with_database
from gateway.cli.remote import KeyOption, Remote, UrlOption, call, parse_time, refuse_local_only, remote
from gateway.config.applied import PolicyStore, Snapshot, diff_files, read_policy_files
from gateway.config.yamlfile import ConfigError
from gateway.storage import Database

app = typer.Typer(help="Team, model, routing, budget and prompt policies.", no_args_is_help=True)

DirOption = Annotated[
    Path | None,
    typer.Option("--dir", help="The policy files' folder (default: the config's policies_dir; ./policies in "
                 "remote mode)."),
]


def _files(api: Remote | None, config: str | None, folder: Path | None) -> dict[str, str]:
    if api is not None:
        refuse_local_only("--config", config)
        return read_policy_files(folder or Path("policies"))
    if folder is not None:
        return read_policy_files(folder)
    settings = settings_or_exit(config)
    return read_policy_files(settings.resolve_path(settings.policies_dir))


@app.command()
def apply(
    reason: Annotated[str | None, typer.Option("--reason", "-m", help="Why; kept in the audit log.")] = None,
    ticket: Annotated[str | None, typer.Option(help="Change ticket id, for the audit log.")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Validate and show the diff only.")] = False,
    actor: Annotated[str | None, typer.Option(help="Who applies (default: the OS user).")] = None,
    config: ConfigOption = None,
    folder: DirOption = None,
    url: UrlOption = None,
    key: KeyOption = None,
) -> None:
    """Validate every policy file, show the diff against what is applied, and apply it.

    Every replica picks the change up within about a second, without a restart.
    """
    api = remote(url, key)
    files = _files(api, config, folder)
    if api is not None:
        refuse_local_only("--actor", actor)
        body = {"files": files, "reason": reason, "ticket": ticket, "dry_run": dry_run}
        applied = call(lambda: api.post("/admin/policies/apply", body))
        version, diff = applied["version"], applied["diff"]
    else:
        settings = settings_or_exit(config)

        async def do_apply(db: Database) -> tuple[int | None, str]:
            result = await PolicyStore(db).apply(
                files, Actor.cli(actor or getpass.getuser()), reason=reason, ticket=ticket, dry_run=dry_run
            )
            return result.version, result.diff

        try:
            version, diff = with_database(settings, do_apply)
        except ConfigError as exc:
            fail_config(exc)
            return
    if diff:
        console.print(diff, markup=False, highlight=False, soft_wrap=True)
    if dry_run:
        console.print("valid; dry run, nothing applied" + ("" if diff else " (no changes)"))
    elif version is None:
        console.print("no changes: the files are what is applied")
    else:
        console.print(f"applied policy version {version}; replicas pick it up within a second")


@app.command()
def status(config: ConfigOption = None, folder: DirOption = None, url: UrlOption = None,
           key: KeyOption = None) -> None:
    """Which policy version is applied, and whether the files on disk differ from it."""
    api = remote(url, key)
    files = _files(api, config, folder)
    snapshot: Snapshot | None
    if api is not None:
        found = call(lambda: api.get("/admin/policies"))
        snapshot = None if found["version"] is None else Snapshot(
            version=found["version"], files=found["files"], applied_at=parse_time(found["applied_at"]),
            actor=found["applied_by"])
    else:
        settings = settings_or_exit(config)

        async def latest(db: Database) -> Snapshot | None:
            return await PolicyStore(db).latest()

        snapshot = with_database(settings, latest)
    if snapshot is None:
        console.print("nothing applied yet: replicas serve their policy files; run `gateway policies apply`")
        return
    console.print(f"applied version {snapshot.version} at {snapshot.applied_at:%Y-%m-%d %H:%M:%S} UTC "
                  f"by {snapshot.actor}", highlight=False)
    diff = diff_files(snapshot.files, files)
    console.print("files match the applied version" if not diff else "files differ from the applied version:")
    if diff:
        console.print(diff, markup=False, highlight=False, soft_wrap=True)
