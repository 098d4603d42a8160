"""``gateway prompts ...`` — the prompt author's workflow, straight against storage or remotely.

Local mode: the CLI acts as the local operator: whoever can run it here can read the config and the
database, so it has the admin role. The evaluation gate still holds: a protected label
(``production`` by default) moves only to a version whose latest evaluation passed, unless
``--force --reason "..."`` is given, and that is audited. The actor in the audit log is
``cli:<--author or the OS user>``.

Remote mode (``GATEWAY_URL`` and ``GATEWAY_KEY``, or ``--url``/``--key``; see
``gateway.cli.remote``): the same commands go through ``/admin/prompts`` and act with the
key's roles, so an ``author`` key cannot move ``production``. Both modes build the admin API's
models (``gateway.admin.prompt_models``) and print them with the same code.
"""

from __future__ import annotations

import getpass
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import orjson
import typer
from rich.markup import escape
from rich.table import Table

from gateway.admin.prompt_models import DiffOut, EvalOut, HistoryOut, LabelOut, PushOut, ShowOut, SummaryOut
from gateway.cli.common import ConfigOption, console, err_console, fail, fail_config, run, settings_or_exit
from gateway.cli.remote import KeyOption, Remote, RemoteError, UrlOption, refuse_local_only, remote, segment
from gateway.config.settings import Settings
from gateway.config.yamlfile import ConfigError
from gateway.errors import GatewayError
from gateway.prompts.errors import InvalidPrompt
from gateway.prompts.refs import parse_version
from gateway.prompts.signing import SigningKeyError

if TYPE_CHECKING:
    # Loaded when a local command runs: the service and its storage are a good part of a
    # second of start-up that remote mode (GATEWAY_URL) never needs.
    from gateway.prompts import Caller, PromptService

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
    from gateway.prompts import Caller

    if not author:
        try:
            author = getpass.getuser()
        except (KeyError, OSError):
            author = "local"
    return Caller.operator(author)


def _with_service(settings: Settings, work: Callable[[PromptService], Awaitable[T]]) -> T:
    from gateway.prompts import open_service

    async def go() -> T:
        async with open_service(settings) as service:
            return await work(service)

    return _guarded(lambda: run(go))


def _guarded(call: Callable[[], T]) -> T:
    try:
        return call()
    except InvalidPrompt as exc:
        _problems(exc.problems)
    except RemoteError as exc:
        if exc.problems:
            _problems(exc.problems)
        fail(exc.message)
    except GatewayError as exc:
        fail(exc.message)
    except ConfigError as exc:
        fail_config(exc)
    except SigningKeyError as exc:
        fail(str(exc))
    raise AssertionError("unreachable")  # every branch above exits


def _problems(problems: list[str]) -> None:
    for problem in problems:
        err_console.print(f"[red]error:[/red] {escape(problem)}", highlight=False, soft_wrap=True)
    raise typer.Exit(1)


def _json(value: Any) -> None:
    print(orjson.dumps(value, option=orjson.OPT_INDENT_2, default=str).decode())


def _dump(model: Any, **exclude: bool) -> Any:
    return model.model_dump(mode="json", exclude=set(exclude) or None)


def _check_format(output: str) -> None:
    if output not in ("table", "json"):
        fail("--format must be table or json")


# -- changes --------------------------------------------------------------------------------


def _local_only(api: Remote | None, author: str | None, config: str | None) -> None:
    if api is not None:
        refuse_local_only("--author", author)
        refuse_local_only("--config", config)


@app.command()
def push(
    file: Annotated[Path, typer.Argument(help="A prompt YAML file or a folder with prompt.yaml; a bare name is "
                                         "looked up in prompts_dir (./prompts in remote mode).")],
    message: Annotated[str, typer.Option("--message", "-m", help="Why this change (required).")],
    ticket: TicketOption = None,
    author: AuthorOption = None,
    output: FormatOption = "table",
    config: ConfigOption = None,
    url: UrlOption = None,
    key: KeyOption = None,
) -> None:
    """Validate a prompt and store it as a new immutable version (`latest` moves to it)."""
    _check_format(output)
    api = remote(url, key)
    _local_only(api, author, config)
    if api is not None:
        path = _find(file, Path("prompts"))
        text, dataset = _guarded(lambda: _read_for_push(path))
        result = _guarded(lambda: PushOut.model_validate(api.post("/admin/prompts", {
            "source": text, "dataset": dataset, "message": message, "ticket": ticket, "origin": str(path)})))
    else:
        caller = _caller(author)
        settings = settings_or_exit(config)
        path = _find(file, settings.resolve_path(settings.prompts_dir))

        async def work(service: PromptService) -> PushOut:
            source = service.load_file(path)
            return PushOut.of_result(await service.push(source, caller, message=message, ticket=ticket))

        result = _with_service(settings, work)
    if output == "json":
        _json(_dump(result))
        return
    for warning in result.warnings:
        err_console.print(f"[yellow]warning:[/yellow] {escape(warning)}", highlight=False, soft_wrap=True)
    if result.created:
        console.print(f"Pushed {result.name} v{result.version} (sha256 {result.sha256[:12]}, signed by key "
                      f"{result.key_id}); 'latest' now points at v{result.version}.", highlight=False)
    else:
        console.print(f"Unchanged: this content is already {result.name} v{result.version}.", highlight=False)


def _find(file: Path, prompts_dir: Path) -> Path:
    """``support-answer`` finds prompts/support-answer (or prompts/support-answer.yaml)."""
    if not file.exists() and not file.is_absolute():
        in_repository = prompts_dir / file
        for candidate in (in_repository, in_repository.with_suffix(".yaml")):
            if candidate.exists():
                return candidate
    return file


def _read_for_push(path: Path) -> tuple[str, str | None]:
    """The prompt's YAML text and its dataset's JSONL text, validated here first so problems cite
    this machine's file and line exactly as in local mode (the gateway validates again, and
    checks the model alias against its policies)."""
    import yaml

    from gateway.prompts.evals import default_evaluators
    from gateway.prompts.source import FOLDER_FILES, SourceError, load_source

    try:
        load_source(path, evaluators=default_evaluators())
    except SourceError as exc:
        raise InvalidPrompt(exc.problems) from None
    if path.is_dir():
        path = next(path / name for name in FOLDER_FILES if (path / name).is_file())
    text = path.read_text(encoding="utf-8")
    document = yaml.safe_load(text)
    dataset = document.get("dataset") if isinstance(document, dict) else None
    # load_source has just read the dataset file: it exists and is UTF-8.
    return text, (path.parent / dataset).read_text(encoding="utf-8") if isinstance(dataset, str) else None


@app.command()
def check(
    paths: Annotated[list[Path], typer.Argument(help="Prompt files, prompt folders, or folders of prompts "
                                                "(such as prompts/).")],
    config: ConfigOption = None,
) -> None:
    """Validate prompt files without pushing them (for pull requests); exit 1 listing every problem.

    The checks are push's: schema, Jinja2 syntax, variables, golden cases. With a config
    (--config, GATEWAY_CONFIG or ./gateway.yaml) each prompt's model is also checked against
    the policy files' aliases; no database is opened either way.
    """
    from gateway.prompts.evals import default_evaluators
    from gateway.prompts.source import SourceError, load_source

    model_kinds = _local_model_kinds(config)
    evaluators = default_evaluators()
    files = [found for path in paths for found in _prompt_files(path)]
    if not files:
        fail("no prompt files found in " + ", ".join(str(path) for path in paths))
    failed = 0
    for file in files:
        try:
            source = load_source(file, evaluators=evaluators, model_kinds=model_kinds)
        except SourceError as exc:
            failed += 1
            for problem in exc.problems:
                err_console.print(f"[red]error:[/red] {escape(problem)}", highlight=False, soft_wrap=True)
            continue
        for warning in source.warnings:
            err_console.print(f"[yellow]warning:[/yellow] {escape(warning)}", highlight=False, soft_wrap=True)
        console.print(f"ok: {escape(str(file))} ({escape(source.spec.name)}, {len(source.spec.golden)} golden "
                      f"cases, sha256 {source.sha256[:12]})", highlight=False)
    if failed:
        fail(f"{failed} of {len(files)} prompt files have problems.")
    console.print(f"{len(files)} prompt file{'s' if len(files) != 1 else ''} valid.", highlight=False)


def _prompt_files(path: Path) -> list[Path]:
    """A file or a prompt folder as given; a folder of prompts as its *.yaml files and prompt folders."""
    from gateway.prompts.source import FOLDER_FILES

    if not path.is_dir() or any((path / name).is_file() for name in FOLDER_FILES):
        return [path]  # load_source reports a missing file
    def is_prompt(child: Path) -> bool:
        if child.is_dir():
            return any((child / name).is_file() for name in FOLDER_FILES)
        return child.suffix in (".yaml", ".yml")

    return [child for child in sorted(path.iterdir()) if is_prompt(child)]


def _local_model_kinds(config: str | None) -> dict[str, str] | None:
    """The aliases of the local policy files, when a config is found (None: skip that check)."""
    from gateway.config.settings import config_path

    if config is None and not config_path(None).exists():
        return None
    from gateway.catalog import build_catalog
    from gateway.config.policies import load_policies

    settings = settings_or_exit(config)
    try:
        catalog = build_catalog(load_policies(settings.resolve_path(settings.policies_dir)))
    except ConfigError as exc:
        fail_config(exc)
        raise  # unreachable: fail_config exits
    return {name: alias.kind for name, alias in catalog.aliases.items()}


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
    url: UrlOption = None,
    key: KeyOption = None,
) -> None:
    """Point LABEL at VERSION."""
    number = parse_version(version)
    if number is None:
        fail(f"VERSION must look like 3 or v3, not {version!r}")
        return
    api = remote(url, key)
    _local_only(api, author, config)
    if api is not None:
        body = {"version": number, "force": force, "reason": reason, "ticket": ticket}
        result = _guarded(lambda: LabelOut.model_validate(
            api.put(f"/admin/prompts/{segment(name)}/labels/{segment(label)}", body)))
    else:
        caller = _caller(author)
        result = _with_service(settings_or_exit(config), lambda service: _label(service.set_label(
            name, label, number, caller, force=force, reason=reason, ticket=ticket)))
    _print_move(result)


async def _label(change: Awaitable[Any]) -> LabelOut:
    return LabelOut.of(await change)


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
    url: UrlOption = None,
    key: KeyOption = None,
) -> None:
    """Point --to at the version --from points at (default: staging → production)."""
    api = remote(url, key)
    _local_only(api, author, config)
    if api is not None:
        body = {"from_label": from_label, "to_label": to_label, "force": force, "reason": reason, "ticket": ticket}
        result = _guarded(lambda: LabelOut.model_validate(api.post(f"/admin/prompts/{segment(name)}/promote", body)))
    else:
        caller = _caller(author)
        result = _with_service(settings_or_exit(config), lambda service: _label(service.promote(
            name, from_label, to_label, caller, force=force, reason=reason, ticket=ticket)))
    _print_move(result)


@app.command()
def rollback(
    name: str,
    label: str,
    reason: Annotated[str | None, typer.Option("--reason", help="Why, for the audit log.")] = None,
    ticket: TicketOption = None,
    author: AuthorOption = None,
    config: ConfigOption = None,
    url: UrlOption = None,
    key: KeyOption = None,
) -> None:
    """Move LABEL back to the version it held before its last move."""
    api = remote(url, key)
    _local_only(api, author, config)
    if api is not None:
        result = _guarded(lambda: LabelOut.model_validate(api.post(
            f"/admin/prompts/{segment(name)}/labels/{segment(label)}/rollback", {"reason": reason, "ticket": ticket})))
    else:
        caller = _caller(author)
        result = _with_service(settings_or_exit(config), lambda service: _label(service.rollback(
            name, label, caller, reason=reason, ticket=ticket)))
    _print_move(result)


def _print_move(result: LabelOut) -> None:
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


def _read(api: Remote | None, config: str | None, path: str,
          local: Callable[[PromptService], Awaitable[T]], **params: str) -> Any:
    """GET ``path`` from the admin API (remote mode), or run ``local`` on the service."""
    if api is not None:
        refuse_local_only("--config", config)
        return _guarded(lambda: api.get(path, **params))
    return _with_service(settings_or_exit(config), local)


@app.command("list")
def list_prompts(output: FormatOption = "table", config: ConfigOption = None, url: UrlOption = None,
                 key: KeyOption = None) -> None:
    """Every prompt with its latest version and labels."""
    _check_format(output)

    async def local(service: PromptService) -> list[dict[str, Any]]:
        return [_dump(SummaryOut.of(s)) for s in await service.list_prompts(_caller(None))]

    summaries = [SummaryOut.model_validate(s) for s in _read(remote(url, key), config, "/admin/prompts", local)]
    if output == "json":
        _json([_dump(s) for s in summaries])
        return
    table = Table("prompt", "latest", "labels", "pushed (UTC)", "by")
    for s in summaries:
        labels = ", ".join(f"{label}=v{version}" for label, version in s.labels.items() if label != "latest")
        table.add_row(s.name, f"v{s.latest}", labels, s.updated_at.strftime("%Y-%m-%d %H:%M"), s.author)
    console.print(table)


def _show(api: Remote | None, config: str | None, reference: str) -> ShowOut:
    async def local(service: PromptService) -> ShowOut:
        return ShowOut.of_view(await service.show(reference, _caller(None)))

    found = _read(api, config, f"/admin/prompts/{segment(reference)}", local)
    return found if isinstance(found, ShowOut) else ShowOut.model_validate(found)


@app.command()
def show(
    reference: Annotated[str, typer.Argument(help="NAME (latest), NAME@LABEL or NAME@vN.")],
    output: FormatOption = "table",
    config: ConfigOption = None,
    url: UrlOption = None,
    key: KeyOption = None,
) -> None:
    """One version: who pushed it and why, its labels, last evaluation and source."""
    _check_format(output)
    view = _show(remote(url, key), config, reference)
    evaluation = view.latest_eval
    if output == "json":
        _json(_dump(view, document=True))
        return
    pointing = [label for label, version in view.labels.items() if version == view.version]
    console.print(f"[bold]{escape(view.name)} v{view.version}[/bold]  labels: {', '.join(pointing) or '-'}",
                  highlight=False)
    console.print(f"pushed {view.created_at:%Y-%m-%d %H:%M:%S} UTC by {escape(view.author)}"
                  + (f", ticket {escape(view.ticket)}" if view.ticket else ""), highlight=False)
    console.print(f"message: {escape(view.message)}", highlight=False)
    console.print(f"sha256 {view.sha256}, key {view.key_id}: "
                  + ("[green]signature verified[/green]" if view.integrity == "verified"
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
def history(name: str, output: FormatOption = "table", config: ConfigOption = None, url: UrlOption = None,
            key: KeyOption = None) -> None:
    """Every version of a prompt and every label move."""
    _check_format(output)

    async def local(service: PromptService) -> HistoryOut:
        return HistoryOut.of(name, await service.history(name, _caller(None)))

    found = _read(remote(url, key), config, f"/admin/prompts/{segment(name)}/history", local)
    found = found if isinstance(found, HistoryOut) else HistoryOut.model_validate(found)
    if output == "json":
        _json(_dump(found))
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
    url: UrlOption = None,
    key: KeyOption = None,
) -> None:
    """Unified diff of two versions' rendered sources."""

    async def local(service: PromptService) -> DiffOut:
        return DiffOut(name=name, a=a, b=b, diff=await service.diff(name, a, b, _caller(None)))

    found = _read(remote(url, key), config, f"/admin/prompts/{segment(name)}/diff", local, a=a, b=b)
    text = (found if isinstance(found, DiffOut) else DiffOut.model_validate(found)).diff
    print(text or f"(no difference between {a} and {b})", end="" if text.endswith("\n") else "\n")


@app.command("eval")
def evaluate(
    reference: Annotated[str, typer.Argument(help="NAME@vN, NAME@LABEL or NAME (latest).")],
    author: AuthorOption = None,
    output: FormatOption = "table",
    config: ConfigOption = None,
    url: UrlOption = None,
    key: KeyOption = None,
) -> None:
    """Run the version's golden dataset through the gateway; exit 1 if it fails."""
    _check_format(output)
    api = remote(url, key)
    _local_only(api, author, config)
    if api is not None:
        # The label or `latest` is resolved first, then that version is evaluated: the result
        # names the version, so a label moved in between cannot be mistaken for another.
        view = _show(api, None, reference)
        record = _guarded(lambda: EvalOut.model_validate(api.post(
            f"/admin/prompts/{segment(view.name)}/versions/{view.version}/evals",
            timeout=api.evaluation_timeout())))
    else:
        record = _evaluate_locally(reference, author, config)
    if output == "json":
        _json(_dump(record))
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


def _evaluate_locally(reference: str, author: str | None, config: str | None) -> EvalOut:
    # Imported here: the whole server runtime is heavy and only evaluations need it in the CLI.
    from gateway.prompts import PromptRepository
    from gateway.runtime import create_runtime

    settings = settings_or_exit(config)
    # The evaluation's requests are this command's work, not a server's traffic: no access-log
    # lines in its output (the ledger still records each case, as the server's runs do).
    settings = settings.model_copy(update={"server": settings.server.model_copy(update={"access_log": False})})
    caller = _caller(author)

    async def go() -> EvalOut:
        runtime = await create_runtime(settings)
        try:
            assert isinstance(runtime.prompts, PromptRepository)
            return EvalOut.of(await runtime.prompts.service.evaluate(reference, caller))
        finally:
            await runtime.close()

    return _guarded(lambda: run(go))


@app.command()
def keygen() -> None:
    """Print a new signing key for GATEWAY_PROMPT_SIGNING_KEY (share it with every replica and CLI)."""
    from gateway.prompts.signing import Signer, generate_key

    key = generate_key()
    console.print(f"public key (for prompts.trusted_public_keys when rotating): {Signer(key).public_key}",
                  highlight=False)
    print(key)
