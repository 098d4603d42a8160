"""``gateway config check`` — validate gateway.yaml and every policy file, with file and line."""

from __future__ import annotations

import typer

from gateway.catalog import build_catalog
from gateway.cli.common import ConfigOption, console, fail_config, settings_or_exit
from gateway.config.policies import load_policies
from gateway.config.yamlfile import ConfigError

app = typer.Typer(help="Configuration.", no_args_is_help=True)


@app.command()
def check(config: ConfigOption = None) -> None:
    """Validate the config and the policies; exit 1 with every problem listed."""
    settings = settings_or_exit(config)
    policies_dir = settings.resolve_path(settings.policies_dir)
    try:
        catalog = build_catalog(load_policies(policies_dir))
    except ConfigError as exc:
        fail_config(exc)
    console.print(
        f"ok: {len(catalog.aliases)} model aliases, {len(catalog.teams)} teams, policies in {policies_dir}",
        highlight=False,
    )
