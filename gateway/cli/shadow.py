"""``gateway shadow report RULE`` — how a shadow rule's copies compare with their primaries.

Reads the stored comparisons (``shadow_comparisons``) straight from the database, or, with
``GATEWAY_URL``/``--url``, through ``GET /admin/shadow/RULE/report`` with the key's roles.
"""

from __future__ import annotations

from typing import Annotated, Any

import orjson
import typer

from gateway.cli.common import ConfigOption, console, fail, settings_or_exit, with_database
from gateway.cli.remote import KeyOption, UrlOption, call, refuse_local_only, remote, segment

app = typer.Typer(help="Shadow traffic (policies/shadows.yaml).", no_args_is_help=True)


@app.command()
def report(
    rule: str,
    since: Annotated[str | None, typer.Option(help="A duration back from now (24h, 7d) or an ISO date/time.")] = None,
    output: Annotated[str, typer.Option("--format", help="table or json.")] = "table",
    config: ConfigOption = None,
    url: UrlOption = None,
    key: KeyOption = None,
) -> None:
    """Copies by outcome, agreement (exact, similarity, length, JSON, tools), latency and cost."""
    if output not in ("table", "json"):
        fail("--format is table or json")
    api = remote(url, key)
    if api is not None:
        refuse_local_only("--config", config)
        found: dict[str, Any] = call(
            lambda: api.get(f"/admin/shadow/{segment(rule)}/report", **({"since": since} if since else {}))
        )
    else:
        found = _local(rule, since, config)
    if output == "json":
        print(orjson.dumps(found, option=orjson.OPT_INDENT_2).decode())
        return
    _print(found)


def _local(rule: str, since: str | None, config: str | None) -> dict[str, Any]:
    from gateway.config.applied import catalog_in_force
    from gateway.shadow.report import parse_since, shadow_report

    try:
        start = parse_since(since)
    except ValueError as exc:
        fail(str(exc))
        raise AssertionError("unreachable") from None
    settings = settings_or_exit(config)

    async def go(db: Any) -> dict[str, Any]:
        found = await shadow_report(db, rule, start)
        if not found["copies"] and rule not in (await catalog_in_force(settings, db)).catalog.shadows.by_id:
            fail(f"No shadow rule '{rule}' in the applied policies, and no copies of it recorded.")
        return found

    return with_database(settings, go)


def _fmt(value: Any, pattern: str = "{:.4f}") -> str:
    return "" if value is None else pattern.format(value)


def _print(found: dict[str, Any]) -> None:
    from rich.table import Table

    head = Table("field", "value", title=f"shadow rule {found['rule']} since {found['since']}", show_header=False)
    head.add_row("targets", ", ".join(found["targets"]))
    head.add_row("copies recorded", str(found["copies"]))
    head.add_row("outcomes", ", ".join(f"{name} {count}" for name, count in found["outcomes"].items()))
    if found["error_codes"]:
        head.add_row("error codes", ", ".join(f"{name} {count}" for name, count in found["error_codes"].items()))
    console.print(head)
    agreement = found["agreement"]
    table = Table(
        "compared",
        "exact match",
        "similarity mean",
        "similarity p50",
        "similarity p10",
        "length ratio",
        "JSON valid",
        "schema valid",
        "same tools",
        title="agreement with the primary",
    )
    table.add_row(
        str(agreement["compared"]),
        _fmt(agreement["exact_match_rate"], "{:.1%}"),
        _fmt(agreement["similarity_mean"]),
        _fmt(agreement["similarity_p50"]),
        _fmt(agreement["similarity_p10"]),
        _fmt(agreement["length_ratio_mean"], "{:.2f}"),
        _fmt(agreement["json_valid_rate"], "{:.1%}"),
        _fmt(agreement["schema_valid_rate"], "{:.1%}"),
        _fmt(agreement["tools_match_rate"], "{:.1%}"),
    )
    console.print(table)
    cost = found["cost_usd"]
    side = Table(
        "",
        "latency p50 ms",
        "latency p95 ms",
        "latency mean ms",
        "cost total $",
        "cost mean $",
        title="primary vs shadow",
    )
    for name in ("primary", "shadow"):
        latency = found["latency_ms"][name]
        side.add_row(
            name,
            _fmt(latency["p50"], "{:.1f}"),
            _fmt(latency["p95"], "{:.1f}"),
            _fmt(latency["mean"], "{:.1f}"),
            _fmt(cost[f"{name}_total"], "{:.6f}"),
            _fmt(cost[f"{name}_mean"], "{:.6f}"),
        )
    console.print(side)
