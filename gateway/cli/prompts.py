"""``gateway prompts ...`` — the prompt author's workflow, straight against storage.

The CLI acts as the local operator: whoever can run it here can read the config and the
database, so it has the admin role. The evaluation gate still holds: a protected label
(``production`` by default) moves only to a version whose latest evaluation passed, unless
``--force --reason "..."`` is given, and that is audited. The actor in the audit log is
``cli:<--author or the OS user>``.
"""

from __future__ import annotations

import getpass
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import orjson
import typer
from rich.markup import escape
from rich.table import Table

from gateway.cli.common import ConfigOption, console, err_console, fail, fail_config, run, settings_or_exit
from gateway.config.settings import Settings
from gateway.config.yamlfile import ConfigError
from gateway.errors import GatewayError
from gateway.prompts import Caller, PromptRepository, PromptService, open_service
from gateway.prompts.errors import InvalidPrompt
from gateway.prompts.refs import parse_version
from gateway.prompts.signing import Signer, SigningKeyError, generate_key
from gateway.prompts.store import EvalRecord, VersionRecord

T = TypeVar("T")

app = typer.Typer(help="The prompt repository: versions, labels, evaluations.", no_args_is_help=True)
label_app = typer.Typer(help="Point labels at versions.", no_args_is_help=True)
app.add_typer(label_app, name="label")

AuthorOption = Annotated[
    str | None, typer.Option("--author", help="Who is acting, for the version and the audit log (default: OS user).")
]
TicketOption = Annotated[str | None, typer.Option("--ticket", help="A ticket id recorded with the change.")]
FormatOption = Annotated[str, typer.Option("--format", help="table or json.")]


def _caller(author: str | None) -> Caller:
    if not author:
        try:
            author = getpass.getuser()
        except (KeyError, OSError):
            author = "local"
    return Caller.operator(author)


def _with_service(settings: Settings, work: Callable[[PromptService], Awaitable[T]]) -> T:
    async def go() -> T:
        async with open_service(settings) as service:
            return await work(service)

    return _guarded(lambda: run(go))


def _guarded(call: Callable[[], T]) -> T:
    try:
        return call()
    except InvalidPrompt as exc:
        for problem in exc.problems:
            err_console.print(f"[red]error:[/red] {escape(problem)}", highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None
    except GatewayError as exc:
        fail(exc.message)
    except ConfigError as exc:
        fail_config(exc)
    except SigningKeyError as exc:
        fail(str(exc))
    raise AssertionError("unreachable")  # every branch above exits


def _json(value: Any) -> None:
    print(orjson.dumps(value, option=orjson.OPT_INDENT_2, default=str).decode())


def _version_dict(record: VersionRecord) -> dict[str, Any]:
    return {"name": record.name, "version": record.version, "sha256": record.sha256, "author": record.author,
            "message": record.message, "ticket": record.ticket, "created_at": record.created_at.isoformat(),
            "key_id": record.key_id}


def _eval_dict(record: EvalRecord) -> dict[str, Any]:
    return {"id": record.id, "name": record.name, "version": record.version, "model": record.model,
            "passed": record.passed, "score": record.score, "pass_rate": record.pass_rate, "cases": record.cases,
            "passed_cases": record.passed_cases, "cost_usd": record.cost_usd, "actor": record.actor,
            "started_at": record.started_at.isoformat(), "finished_at": record.finished_at.isoformat(),
            "results": record.results}


def _check_format(output: str) -> None:
    if output not in ("table", "json"):
        fail("--format must be table or json")


# -- changes --------------------------------------------------------------------------------


@app.command()
def push(
    file: Annotated[Path, typer.Argument(help="A prompt YAML file or a folder with prompt.yaml; a bare name is "
                                         "looked up in prompts_dir.")],
    message: Annotated[str, typer.Option("--message", "-m", help="Why this change (required).")],
    ticket: TicketOption = None,
    author: AuthorOption = None,
    output: FormatOption = "table",
    config: ConfigOption = None,
) -> None:
    """Validate a prompt and store it as a new immutable version (`latest` moves to it)."""
    _check_format(output)
    caller = _caller(author)
    settings = settings_or_exit(config)
    if not file.exists() and not file.is_absolute():
        # `gateway prompts push support-answer` finds prompts/support-answer (prompts_dir).
        in_repository = settings.resolve_path(settings.prompts_dir) / file
        for candidate in (in_repository, in_repository.with_suffix(".yaml")):
            if candidate.exists():
                file = candidate
                break

    async def work(service: PromptService) -> Any:
        source = service.load_file(file)
        return await service.push(source, caller, message=message, ticket=ticket)

    result = _with_service(settings, work)
    record = result.version
    if output == "json":
        _json({**_version_dict(record), "created": result.created, "warnings": list(result.warnings)})
        return
    for warning in result.warnings:
        err_console.print(f"[yellow]warning:[/yellow] {escape(warning)}", highlight=False, soft_wrap=True)
    if result.created:
        console.print(f"Pushed {record.name} v{record.version} (sha256 {record.sha256[:12]}, signed by key "
                      f"{record.key_id}); 'latest' now points at v{record.version}.", highlight=False)
    else:
        console.print(f"Unchanged: this content is already {record.name} v{record.version}.", highlight=False)


@label_app.command("set")
def label_set(
    name: str,
    label: str,
    version: Annotated[str, typer.Argument(help="3 or v3.")],
    force: Annotated[bool, typer.Option("--force", help="Skip the evaluation gate (needs --reason).")] = False,
    reason: Annotated[str | None, typer.Option("--reason", help="Why; required with --force.")] = None,
    ticket: TicketOption = None,
    author: AuthorOption = None,
    config: ConfigOption = None,
) -> None:
    """Point LABEL at VERSION."""
    number = parse_version(version)
    if number is None:
        fail(f"VERSION must look like 3 or v3, not {version!r}")
        return
    caller = _caller(author)
    result = _with_service(settings_or_exit(config), lambda service: service.set_label(
        name, label, number, caller, force=force, reason=reason, ticket=ticket))
    _print_move(result)


@app.command()
def promote(
    name: str,
    from_label: Annotated[str, typer.Option("--from", help="The label whose version is promoted.")] = "staging",
    to_label: Annotated[str, typer.Option("--to", help="The label that moves.")] = "production",
    force: Annotated[bool, typer.Option("--force", help="Skip the evaluation gate (needs --reason).")] = False,
    reason: Annotated[str | None, typer.Option("--reason", help="Why; required with --force.")] = None,
    ticket: TicketOption = None,
    author: AuthorOption = None,
    config: ConfigOption = None,
) -> None:
    """Point --to at the version --from points at (default: staging → production)."""
    caller = _caller(author)
    result = _with_service(settings_or_exit(config), lambda service: service.promote(
        name, from_label, to_label, caller, force=force, reason=reason, ticket=ticket))
    _print_move(result)


@app.command()
def rollback(
    name: str,
    label: str,
    reason: Annotated[str | None, typer.Option("--reason", help="Why, for the audit log.")] = None,
    ticket: TicketOption = None,
    author: AuthorOption = None,
    config: ConfigOption = None,
) -> None:
    """Move LABEL back to the version it held before its last move."""
    caller = _caller(author)
    result = _with_service(settings_or_exit(config), lambda service: service.rollback(
        name, label, caller, reason=reason, ticket=ticket))
    _print_move(result)


def _print_move(result: Any) -> None:
    if not result.changed:
        console.print(f"Unchanged: {result.name}@{result.label} already points at v{result.to_version}.",
                      highlight=False)
        return
    before = f"v{result.from_version}" if result.from_version is not None else "(unset)"
    note = " [FORCED, audited with the reason]" if result.forced else ""
    if result.eval_id is not None:
        note += f" (evaluation #{result.eval_id} passed)"
    console.print(f"{result.name}@{result.label}: {before} → v{result.to_version}{escape(note)}", highlight=False)


# -- reads ----------------------------------------------------------------------------------


@app.command("list")
def list_prompts(output: FormatOption = "table", config: ConfigOption = None) -> None:
    """Every prompt with its latest version and labels."""
    _check_format(output)
    summaries = _with_service(settings_or_exit(config), lambda service: service.list_prompts(_caller(None)))
    if output == "json":
        _json([{"name": s.name, "latest": s.latest, "labels": s.labels, "updated_at": s.updated_at.isoformat(),
                "author": s.author} for s in summaries])
        return
    table = Table("prompt", "latest", "labels", "pushed (UTC)", "by")
    for s in summaries:
        labels = ", ".join(f"{label}=v{version}" for label, version in s.labels.items() if label != "latest")
        table.add_row(s.name, f"v{s.latest}", labels, s.updated_at.strftime("%Y-%m-%d %H:%M"), s.author)
    console.print(table)


@app.command()
def show(
    reference: Annotated[str, typer.Argument(help="NAME (latest), NAME@LABEL or NAME@vN.")],
    output: FormatOption = "table",
    config: ConfigOption = None,
) -> None:
    """One version: who pushed it and why, its labels, last evaluation and source."""
    _check_format(output)
    view = _with_service(settings_or_exit(config), lambda service: service.show(reference, _caller(None)))
    record = view.record
    evaluation = view.latest_eval
    if output == "json":
        _json({**_version_dict(record), "labels": view.labels, "integrity": view.integrity or "verified",
               "source": view.source, "latest_eval": _eval_dict(evaluation) if evaluation else None})
        return
    pointing = [label for label, version in view.labels.items() if version == record.version]
    console.print(f"[bold]{escape(record.name)} v{record.version}[/bold]  labels: {', '.join(pointing) or '-'}",
                  highlight=False)
    console.print(f"pushed {record.created_at:%Y-%m-%d %H:%M:%S} UTC by {escape(record.author)}"
                  + (f", ticket {escape(record.ticket)}" if record.ticket else ""), highlight=False)
    console.print(f"message: {escape(record.message)}", highlight=False)
    console.print(f"sha256 {record.sha256}, key {record.key_id}: "
                  + ("[green]signature verified[/green]" if view.integrity is None
                     else f"[red]INTEGRITY FAILURE: {escape(view.integrity)}[/red]"), highlight=False)
    if evaluation is not None:
        verdict = "[green]passed[/green]" if evaluation.passed else "[red]failed[/red]"
        console.print(f"latest evaluation #{evaluation.id}: {verdict}, {evaluation.passed_cases}/{evaluation.cases} "
                      f"cases, score {evaluation.score:.2f}", highlight=False)
    else:
        console.print("latest evaluation: none", highlight=False)
    console.print()
    print(view.source, end="" if view.source.endswith("\n") else "\n")


@app.command()
def history(name: str, output: FormatOption = "table", config: ConfigOption = None) -> None:
    """Every version of a prompt and every label move."""
    _check_format(output)
    found = _with_service(settings_or_exit(config), lambda service: service.history(name, _caller(None)))
    if output == "json":
        _json({"name": found.name, "labels": found.labels,
               "versions": [_version_dict(record) for record in found.versions],
               "moves": [{"id": m.id, "label": m.label, "from_version": m.from_version, "to_version": m.to_version,
                          "action": m.action, "forced": m.forced, "actor": m.actor, "reason": m.reason,
                          "ticket": m.ticket, "at": m.at.isoformat()} for m in found.moves]})
        return
    versions = Table("version", "pushed (UTC)", "author", "message", "ticket", "sha256", title=f"{name}: versions")
    for record in found.versions:
        versions.add_row(f"v{record.version}", record.created_at.strftime("%Y-%m-%d %H:%M:%S"), record.author,
                         record.message, record.ticket or "", record.sha256[:12])
    console.print(versions)
    moves = Table("when (UTC)", "label", "move", "how", "by", "reason", title=f"{name}: label moves")
    for m in found.moves:
        before = f"v{m.from_version}" if m.from_version is not None else "-"
        how = m.action + (" (forced)" if m.forced else "")
        moves.add_row(m.at.strftime("%Y-%m-%d %H:%M:%S"), m.label, f"{before} → v{m.to_version}", how, m.actor,
                      m.reason or "")
    console.print(moves)


@app.command()
def diff(
    name: str,
    a: Annotated[str, typer.Argument(help="A version (3 or v3) or a label.")],
    b: Annotated[str, typer.Argument(help="A version (3 or v3) or a label.")],
    config: ConfigOption = None,
) -> None:
    """Unified diff of two versions' rendered sources."""
    text = _with_service(settings_or_exit(config), lambda service: service.diff(name, a, b, _caller(None)))
    print(text or f"(no difference between {a} and {b})", end="" if text.endswith("\n") else "\n")


@app.command("eval")
def evaluate(
    reference: Annotated[str, typer.Argument(help="NAME@vN, NAME@LABEL or NAME (latest).")],
    author: AuthorOption = None,
    output: FormatOption = "table",
    config: ConfigOption = None,
) -> None:
    """Run the version's golden dataset through the gateway; exit 1 if it fails."""
    # Imported here: the whole server runtime is heavy and only evaluations need it in the CLI.
    from gateway.runtime import create_runtime

    _check_format(output)
    settings = settings_or_exit(config)
    # The evaluation's requests are this command's work, not a server's traffic: no access-log
    # lines in its output (the ledger still records each case, as the server's runs do).
    settings = settings.model_copy(update={"server": settings.server.model_copy(update={"access_log": False})})
    caller = _caller(author)

    async def go() -> EvalRecord:
        runtime = await create_runtime(settings)
        try:
            assert isinstance(runtime.prompts, PromptRepository)
            return await runtime.prompts.service.evaluate(reference, caller)
        finally:
            await runtime.close()

    record = _guarded(lambda: run(go))
    if output == "json":
        _json(_eval_dict(record))
    else:
        table = Table("case", "result", "score", "cost (USD)", "latency (ms)", "details",
                      title=f"{record.name} v{record.version} on {record.model}")
        for case in record.results:
            failed = [f"{c['kind']}: {c['detail']}" for c in case["checks"] if not c["passed"]]
            if case["error"]:
                failed.insert(0, f"error: {case['error']}")
            table.add_row(case["name"], "[green]pass[/green]" if case["passed"] else "[red]FAIL[/red]",
                          f"{case['score']:.2f}", f"{case['cost_usd']:.6f}", f"{case['latency_ms']:.1f}",
                          escape("; ".join(failed)))
        console.print(table)
        verdict = "[green]PASSED[/green]" if record.passed else "[red]FAILED[/red]"
        console.print(f"{verdict}: {record.passed_cases}/{record.cases} cases, score {record.score:.2f}, "
                      f"cost ${record.cost_usd:.6f}; recorded as evaluation #{record.id}.", highlight=False)
    if not record.passed:
        raise typer.Exit(1)


@app.command()
def keygen() -> None:
    """Print a new signing key for GATEWAY_PROMPT_SIGNING_KEY (share it with every replica and CLI)."""
    key = generate_key()
    console.print(f"public key (for prompts.trusted_public_keys when rotating): {Signer(key).public_key}",
                  highlight=False)
    print(key)
