"""The ``gateway`` command: one typer app, one module per command group.

Commands that change state (keys, prompts, policies) talk to the same storage as the server,
through the same services, so the CLI and the admin API cannot drift apart.

Command groups are imported when they are called (or listed by ``--help``), not up front:
``gateway serve`` is how the server starts, and importing every group's dependencies (the
prompt authoring stack, the cache and budget tooling, rich tables) would add about half a
second to every start-up for commands that are not running.
"""

from __future__ import annotations

import importlib
from typing import Any

import typer
from typer.core import TyperGroup

from gateway.cli import serve

# name -> module whose ``app`` (a typer.Typer) implements the group, in help order.
_GROUPS = {
    "keys": "gateway.cli.keys",
    "cache": "gateway.cli.cache",
    "prompts": "gateway.cli.prompts",
    "models": "gateway.cli.models",
    "config": "gateway.cli.config_cmd",
    "policies": "gateway.cli.policies_cmd",
    "rollouts": "gateway.cli.rollouts",
    "shadow": "gateway.cli.shadow",
    "audit": "gateway.cli.audit_cmd",
    "report": "gateway.cli.report",
    "budgets": "gateway.cli.budgets",
    "hallucination": "gateway.cli.hallucination",
}


class _LazyGroup(TyperGroup):
    def list_commands(self, ctx: Any) -> list[str]:
        return [*super().list_commands(ctx), *(name for name in _GROUPS if name not in self.commands)]

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        command = super().get_command(ctx, cmd_name)
        if command is None and cmd_name in _GROUPS:
            # Built exactly as ``add_typer`` builds it (a one-command group stays a group).
            holder = typer.Typer(add_completion=False)
            holder.add_typer(importlib.import_module(_GROUPS[cmd_name]).app, name=cmd_name)
            holder_group = typer.main.get_command(holder)
            assert isinstance(holder_group, TyperGroup)
            command = holder_group.commands[cmd_name]
            self.commands[cmd_name] = command
        return command


app = typer.Typer(
    name="gateway",
    help="An OpenAI-compatible LLM prompt-and-model gateway.",
    cls=_LazyGroup,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
serve.register(app)


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            typer.echo(f"gateway {version('llm-gateway')}")
        except PackageNotFoundError:  # run from a source tree that was never installed
            typer.echo("gateway (not installed)")
        raise typer.Exit()


@app.callback()
def _root(
    show_version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                      help="Print the version and exit."),
) -> None:
    """An OpenAI-compatible LLM prompt-and-model gateway."""


def main() -> None:
    app()
