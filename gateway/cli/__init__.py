"""The ``gateway`` command: one typer app, one module per command group.

Commands that change state (keys, prompts, policies) talk to the same storage as the server,
through the same services, so the CLI and the admin API cannot drift apart.
"""

from __future__ import annotations

import typer

from gateway.cli import audit_cmd, config_cmd, keys, models, policies_cmd, prompts, serve
from gateway.cli import budgets as budgets_cmd
from gateway.cli import cache as cache_cmd
from gateway.cli import report as report_cmd

app = typer.Typer(
    name="gateway",
    help="An OpenAI-compatible LLM prompt-and-model gateway.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
serve.register(app)
app.add_typer(keys.app, name="keys")
app.add_typer(cache_cmd.app, name="cache")
app.add_typer(prompts.app, name="prompts")
app.add_typer(models.app, name="models")
app.add_typer(config_cmd.app, name="config")
app.add_typer(policies_cmd.app, name="policies")
app.add_typer(audit_cmd.app, name="audit")
app.add_typer(report_cmd.app, name="report")
app.add_typer(budgets_cmd.app, name="budgets")


def main() -> None:
    app()
