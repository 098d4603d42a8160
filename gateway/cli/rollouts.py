"""``gateway rollouts list|status|start|pause|resume|promote|abort`` — operate progressive rollouts.

Rollouts are declared in ``policies/rollouts.yaml`` and applied with ``gateway policies apply``;
these commands move their live state (stored in the database, so every replica follows within
a second) and write an audit entry for each change. The CLI acts as an operator with the admin
role; the evaluation gate of protected prompt labels still applies (``--force --reason``).
"""

from __future__ import annotations

import getpass
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, TypeVar

import orjson
import typer

from gateway.audit import AuditLog
from gateway.cli.common import ConfigOption, console, fail, fail_config, settings_or_exit, with_database
from gateway.config.applied import PolicyStore, catalog_in_force
from gateway.config.settings import Settings
from gateway.config.yamlfile import ConfigError
from gateway.errors import GatewayError
from gateway.prompts.store import PromptStore
from gateway.rollouts.analysis import LedgerMetrics
from gateway.rollouts.control import RolloutControl, RolloutView
from gateway.rollouts.feature import eval_gate
from gateway.rollouts.promotion import AliasPromoter
from gateway.rollouts.state import RolloutStateStore
from gateway.storage import Database

app = typer.Typer(help="Progressive rollouts of prompts and models (policies/rollouts.yaml).", no_args_is_help=True)

T = TypeVar("T")

FormatOption = Annotated[str, typer.Option("--format", help="table or json.")]
ReasonOption = Annotated[str | None, typer.Option("--reason", "-m", help="Why; kept in the audit log.")]
TicketOption = Annotated[str | None, typer.Option(help="Change ticket id, for the audit log.")]
ActorOption = Annotated[str | None, typer.Option(help="Who acts (default: the OS user).")]
ForceOption = Annotated[bool, typer.Option("--force", help="Skip the evaluation gate (needs --reason).")]


def _with_control(settings: Settings, work: Callable[[RolloutControl], Awaitable[T]]) -> T:
    async def go(db: Database) -> T:
        from gateway.prompts import open_service

        catalog = (await catalog_in_force(settings, db)).catalog
        control = RolloutControl(
            RolloutStateStore(db), AuditLog(db), lambda: catalog,
            prompts=lambda: open_service(settings), eval_passed=eval_gate(PromptStore(db)), metrics=LedgerMetrics(db),
            promote_alias=AliasPromoter(PolicyStore(db)),
        )
        return await work(control)

    try:
        return with_database(settings, go)
    except GatewayError as exc:
        fail(exc.message)
    except ConfigError as exc:
        fail_config(exc)
    raise AssertionError("unreachable")  # both branches exit


def _caller(actor: str | None) -> Any:
    from gateway.prompts import Caller

    return Caller.operator(actor or getpass.getuser())


def _check_format(output: str) -> None:
    if output not in ("table", "json"):
        fail("--format is table or json")


def _json(value: Any) -> None:
    print(orjson.dumps(value, option=orjson.OPT_INDENT_2, default=str).decode())


def _target(view: RolloutView) -> str:
    rollout = view.rollout
    if rollout.kind == "prompt":
        return f"prompt:{rollout.prompt}@{rollout.label} → v{rollout.canary_version}"
    return f"{rollout.alias} → {', '.join(d.label for d in rollout.canary)}"


@app.command("list")
def list_(output: FormatOption = "table", config: ConfigOption = None) -> None:
    """Every rollout in the applied policies, with its status, step and canary weight."""
    _check_format(output)
    views = _with_control(settings_or_exit(config), lambda control: control.views())
    if output == "json":
        _json([view.as_dict() for view in views])
        return
    from rich.table import Table

    table = Table("rollout", "target", "status", "step", "weight %", "updated (UTC)", title="rollouts")
    for view in views:
        state = view.state
        table.add_row(view.rollout.id, _target(view), state.status, f"{state.step + 1}/{len(view.rollout.weights)}",
                      f"{view.weight:g}", state.updated_at.strftime("%Y-%m-%d %H:%M:%S") if state.updated_at else "")
    console.print(table)


@app.command()
def status(rollout: str, output: FormatOption = "table", config: ConfigOption = None) -> None:
    """One rollout: its policy, live state and check history."""
    _check_format(output)
    view = _with_control(settings_or_exit(config), lambda control: control.view(rollout))
    if output == "json":
        _json(view.as_dict())
        return
    _print_view(view)


def _print_view(view: RolloutView) -> None:
    from rich.table import Table

    data = view.as_dict()
    table = Table("field", "value", title=f"rollout {view.rollout.id}", show_header=False)
    for name in ("kind", "status", "weight", "step", "failures", "started_at", "step_started_at", "updated_at",
                 "actor", "interval_s", "min_requests", "failure_limit"):
        value = data[name]
        if name == "step":
            value = f"{value + 1} of {len(view.rollout.weights)} " + str([s["weight"] for s in data["steps"]])
        table.add_row(name, "" if value is None else str(value))
    table.add_row("target", _target(view))
    table.add_row("checks", "; ".join(orjson.dumps(check).decode() for check in data["checks"]))
    table.add_row("match", orjson.dumps(data["match"]).decode())
    console.print(table)
    numbers = ("requests", "errors", "error_rate", "p95_ms", "p99_ms", "cost_per_request")
    headers = ("variant", "requests", "errors", "error rate", "p95 ms", "p99 ms", "cost/request USD")
    if view.live:
        live = Table(*headers, title="since the current step began (all replicas)")
        for variant, found in view.live.items():
            live.add_row(variant, *(str(found.get(name, "")) for name in numbers))
        console.print(live)
    if not view.state.history:
        return
    last = view.state.history[-1]
    variants = Table(*headers, title=f"last check's window ({last.get('at', '')})")
    for variant, found in sorted((last.get("variants") or {}).items()):
        variants.add_row(variant, *(str(found.get(name, "")) for name in numbers))
    console.print(variants)
    if last.get("checks"):
        checks = Table("metric", "canary", "stable", "bound", "verdict",
                       title=f"last check: {last.get('verdict', '')} ({last.get('why', '')})")
        for check in last["checks"]:
            checks.add_row(str(check.get("metric")), _number(check.get("canary")), _number(check.get("stable")),
                           _number(check.get("bound")), "pass" if check.get("ok") else "FAIL")
        console.print(checks)
    history = Table("at", "step", "weight %", "verdict", "action", "why", "by", title="checks (latest last)")
    for entry in view.state.history[-20:]:
        history.add_row(str(entry.get("at", "")), str(int(entry.get("step", 0)) + 1), f"{entry.get('weight', 0):g}",
                        str(entry.get("verdict", "")), str(entry.get("action", "")), str(entry.get("why", "")),
                        str(entry.get("by", "")))
    console.print(history)


def _number(value: Any) -> str:
    return "" if value is None else f"{value:g}"


def _changed(view: RolloutView, verb: str) -> None:
    console.print(f"{verb} {view.rollout.id}: {view.state.status}, step {view.state.step + 1} of "
                  f"{len(view.rollout.weights)}, canary weight {view.weight:g} %", highlight=False)


@app.command()
def start(rollout: str, force: ForceOption = False, reason: ReasonOption = None, ticket: TicketOption = None,
          actor: ActorOption = None, config: ConfigOption = None) -> None:
    """Start a pending (start: manual) or aborted rollout at its first step."""
    view = _with_control(settings_or_exit(config), lambda control: control.start(
        rollout, _caller(actor), force=force, reason=reason, ticket=ticket))
    _changed(view, "started")


@app.command()
def pause(rollout: str, reason: ReasonOption = None, ticket: TicketOption = None, actor: ActorOption = None,
          config: ConfigOption = None) -> None:
    """Hold the canary at its current weight (the analysis stops moving it)."""
    view = _with_control(settings_or_exit(config), lambda control: control.pause(
        rollout, _caller(actor), reason=reason, ticket=ticket))
    _changed(view, "paused")


@app.command()
def resume(rollout: str, reason: ReasonOption = None, ticket: TicketOption = None, actor: ActorOption = None,
           config: ConfigOption = None) -> None:
    """Let a paused rollout run again."""
    view = _with_control(settings_or_exit(config), lambda control: control.resume(
        rollout, _caller(actor), reason=reason, ticket=ticket))
    _changed(view, "resumed")


@app.command()
def promote(rollout: str, force: ForceOption = False, reason: ReasonOption = None, ticket: TicketOption = None,
            actor: ActorOption = None, config: ConfigOption = None) -> None:
    """Make the canary the stable (a prompt's label moves to the canary version)."""
    view = _with_control(settings_or_exit(config), lambda control: control.promote(
        rollout, _caller(actor), force=force, reason=reason, ticket=ticket))
    _changed(view, "promoted")


@app.command()
def abort(rollout: str, reason: ReasonOption = None, ticket: TicketOption = None, actor: ActorOption = None,
          config: ConfigOption = None) -> None:
    """Roll back: no request gets the canary any more (every replica within a second)."""
    view = _with_control(settings_or_exit(config), lambda control: control.abort(
        rollout, _caller(actor), reason=reason, ticket=ticket))
    _changed(view, "aborted")
