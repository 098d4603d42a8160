"""``gateway models list`` — the aliases in ``policies/models.yaml`` and where they go."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from gateway.catalog import build_catalog
from gateway.cli.common import ConfigOption, console, fail, fail_config, settings_or_exit
from gateway.config.policies import load_policies
from gateway.config.yamlfile import ConfigError

app = typer.Typer(help="Model aliases.", no_args_is_help=True)


@app.command("list")
def list_models(
    team: Annotated[str | None, typer.Option(help="Only aliases this team may call.")] = None,
    config: ConfigOption = None,
) -> None:
    """List aliases, their deployments and prices (USD per 1M tokens)."""
    settings = settings_or_exit(config)
    try:
        catalog = build_catalog(load_policies(settings.resolve_path(settings.policies_dir)))
    except ConfigError as exc:
        fail_config(exc)
    allowed = catalog.team(team) if team else None
    if team and allowed is None:
        fail(f"unknown team {team!r}")
    table = Table("alias", "kind", "deployment", "upstream", "weight", "$/1M in", "$/1M out")
    for name, alias in catalog.aliases.items():
        if allowed is not None and not allowed.allows_model(name):
            continue
        for deployment in alias.deployments:
            table.add_row(
                name, alias.kind, deployment.label, deployment.base_url or "(built in)", f"{deployment.weight:g}",
                f"{deployment.price.input_per_token * 1e6:.4g}", f"{deployment.price.output_per_token * 1e6:.4g}",
            )
    console.print(table)
