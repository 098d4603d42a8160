"""``gateway config check`` — validate gateway.yaml and every policy file, with file and line."""

from __future__ import annotations

import typer
from pydantic import BaseModel

from gateway.catalog import build_catalog
from gateway.cli.common import ConfigOption, console, fail_config, settings_or_exit
from gateway.config.policies import load_policies
from gateway.config.settings import Settings
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


def _reference_rows(model: type[BaseModel], prefix: str = "") -> list[tuple[str, str, str]]:
    rows: list[tuple[str, str, str]] = []
    for name, field in model.model_fields.items():
        if field.exclude:
            continue
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            rows.extend(_reference_rows(annotation, f"{prefix}{name}."))
            continue
        default = field.get_default(call_default_factory=True)
        if hasattr(default, "get_secret_value"):
            default = "(secret)" if default.get_secret_value() else '""'
        rows.append((f"{prefix}{name}", f"`{default}`", (field.description or "").replace("|", "\\|")))
    return rows


@app.command()
def reference() -> None:
    """Print every gateway.yaml setting with its default, as a Markdown table (for docs/operations.md)."""
    print("| setting | default | meaning |\n| --- | --- | --- |")
    for name, default, description in _reference_rows(Settings):
        print(f"| `{name}` | {default} | {description} |")
