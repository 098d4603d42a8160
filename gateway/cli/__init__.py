"""The ``gateway`` command: one typer app, one module per command group.

Commands that change state (keys, prompts, policies) talk to the same storage as the server,
through the same services, so the CLI and the admin API cannot drift apart.
"""

from __future__ import annotations

import typer

from gateway.cli import config_cmd, keys, models, serve

app = typer.Typer(
    name="gateway",
    help="An OpenAI-compatible LLM prompt-and-model gateway.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
serve.register(app)
app.add_typer(keys.app, name="keys")
app.add_typer(models.app, name="models")
app.add_typer(config_cmd.app, name="config")


def main() -> None:
    app()
