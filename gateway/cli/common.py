"""What every CLI command needs: settings, a clean error exit, and an async runner."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Annotated, TypeVar

import typer
from rich.console import Console

from gateway.config.settings import Settings, load_settings
from gateway.config.yamlfile import ConfigError

T = TypeVar("T")

console = Console()
err_console = Console(stderr=True)

ConfigOption = Annotated[
    str | None,
    typer.Option("--config", "-c", help="Config file (default: $GATEWAY_CONFIG or ./gateway.yaml)."),
]


def fail(message: str, code: int = 1) -> None:
    err_console.print(f"[red]error:[/red] {message}", highlight=False, markup=True)
    raise typer.Exit(code)


def settings_or_exit(config: str | None) -> Settings:
    try:
        return load_settings(config)
    except ConfigError as exc:
        for problem in exc.problems:
            err_console.print(f"[red]error:[/red] {problem}", highlight=False)
        raise typer.Exit(1) from None


def run(factory: Callable[[], Awaitable[T]]) -> T:
    return asyncio.run(factory())  # type: ignore[arg-type]
