"""What every CLI command needs: settings, a clean error exit, and an async runner."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable
from functools import cache
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

from gateway.config.settings import Settings, load_settings
from gateway.config.yamlfile import ConfigError

if TYPE_CHECKING:
    from rich.console import Console

    from gateway.storage import Database

T = TypeVar("T")


@cache
def _consoles() -> tuple[Console, Console]:
    # rich loads on first use: `gateway serve` prints nothing through it unless start-up fails.
    from rich.console import Console

    # Piped output (scripts, CI logs) gets wide tables instead of rich's 80-column squeeze.
    return Console(width=None if sys.stdout.isatty() else 240), Console(stderr=True)


def __getattr__(name: str) -> Any:
    if name == "console":
        return _consoles()[0]
    if name == "err_console":
        return _consoles()[1]
    raise AttributeError(f"module 'gateway.cli.common' has no attribute {name!r}")


def _error(message: str) -> None:
    from rich.markup import escape

    # soft_wrap: an error line must stay one line (file:line: field: problem) for tools to parse.
    _consoles()[1].print(f"[red]error:[/red] {escape(message)}", highlight=False, soft_wrap=True)

ConfigOption = Annotated[
    str | None,
    typer.Option("--config", "-c", help="Config file (default: $GATEWAY_CONFIG or ./gateway.yaml)."),
]


def fail(message: str, code: int = 1) -> None:
    _error(message)
    raise typer.Exit(code)


def fail_config(error: ConfigError) -> None:
    for problem in error.problems:
        _error(problem)
    raise typer.Exit(1)


def settings_or_exit(config: str | None) -> Settings:
    try:
        return load_settings(config)
    except ConfigError as exc:
        fail_config(exc)
        raise  # unreachable: fail_config exits


def run(factory: Callable[[], Awaitable[T]]) -> T:
    return asyncio.run(factory())  # type: ignore[arg-type]


def with_database(settings: Settings, work: Callable[[Database], Awaitable[T]]) -> T:
    """Open storage, run ``work`` on it and close it: the shape of every command that reads
    or changes state, so each command says only what it does with the database."""

    # Imported here: SQLAlchemy is a third of the CLI's start-up, and remote mode never needs it.
    from gateway.storage import open_database

    async def run_work() -> T:
        db = await open_database(settings.database_url)
        try:
            return await work(db)
        finally:
            await db.close()

    return asyncio.run(run_work())
