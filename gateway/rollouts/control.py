"""Operating rollouts: start, pause, resume, promote, abort (and advance, for the analysis).

The CLI (``gateway rollouts``) and the admin API (``/admin/rollouts``) are thin shells over
``RolloutControl``, so both apply the same rules:

- every change is a compare-and-set on the stored state (``RolloutStateStore.put``) followed by
  an audit entry ``rollout.<action>`` on ``rollout:<id>`` with the state before and after;
- roles: a rollout of a *protected* prompt label (``policies/prompts.yaml``) is started,
  promoted and aborted by the ``approver`` role; starting or promoting it also needs a passing
  evaluation of the canary version (the gate that guards the label itself), unless forced with
  a reason. Other prompt rollouts need ``author`` or ``approver``; alias rollouts (models are
  operations' business) need ``approver``. Pausing and resuming needs ``author`` or ``approver``.
  ``admin`` may do everything;
- promoting a prompt rollout moves the label to the canary version through the prompt
  service (audited there as a label move too); promoting an alias rollout makes the canary the
  alias' own stable deployment in the applied policies (``gateway.rollouts.promotion``, audited
  as a ``policy.apply`` too), which every replica loads. Either way the promoted rollout then
  routes nothing of its own: the label, or the alias, serves the canary to everyone.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

from gateway.errors import GatewayError, InvalidRequest, NotFound, PermissionDenied
from gateway.rollouts.state import FINAL, RolloutState, RolloutStateStore, StateConflict, initial_state

if TYPE_CHECKING:
    from gateway.audit import Actor, AuditLog
    from gateway.catalog import Catalog
    from gateway.prompts import Caller, PromptService
    from gateway.rollouts.analysis import MetricSource
    from gateway.rollouts.model import Rollout

ServiceSource = Callable[[], AbstractAsyncContextManager["PromptService"]]


class AliasPromotion(Protocol):
    """Make an alias rollout's canary the alias' stable deployment (``gateway.rollouts.promotion``);
    returns the applied policy version it wrote."""

    async def __call__(self, rollout: Rollout, actor: Actor, *, reason: str | None,
                       ticket: str | None) -> int | None: ...


class Conflict(GatewayError):
    status = 409
    type = "invalid_request_error"


@dataclass(frozen=True, slots=True)
class RolloutView:
    """A rollout's policy and live state together, as ``list``/``status`` show them."""

    rollout: Rollout
    state: RolloutState
    # Each variant's numbers since the current step began (``status`` only), from the ledger.
    live: dict[str, dict[str, Any]] | None = None

    @property
    def weight(self) -> float:
        """The canary's share now, in percent (0 when it routes nothing)."""
        share = self.state.weight_of(self.rollout)
        return round((share or 0.0) * 100, 4)

    def as_dict(self) -> dict[str, Any]:
        rollout, spec = self.rollout, self.rollout.spec
        target: dict[str, Any] = (
            {"prompt": rollout.prompt, "label": rollout.label, "canary_version": rollout.canary_version}
            if rollout.kind == "prompt"
            else {"alias": rollout.alias, "stable": [d.label for d in rollout.stable],
                  "canary": [d.label for d in rollout.canary]}
        )
        return {
            "id": rollout.id, "kind": rollout.kind, "description": spec.description, "target": target,
            "weight": self.weight, "steps": [step.model_dump() for step in spec.steps],
            "interval_s": spec.interval_s, "min_requests": spec.min_requests, "failure_limit": spec.failure_limit,
            "checks": [check.model_dump(exclude_none=True) for check in spec.checks],
            "match": spec.match.model_dump(), **self.state.as_dict(),
            "live": self.live, "last_check": _last_check(self.state),
        }


def _last_check(state: RolloutState) -> dict[str, Any] | None:
    """The latest check with a verdict on each of its conditions (from the stored history)."""
    if not state.history:
        return None
    last = state.history[-1]
    return {name: last.get(name) for name in ("at", "by", "step", "weight", "verdict", "action", "why", "checks",
                                                "variants")}


class RolloutControl:
    def __init__(
        self,
        store: RolloutStateStore,
        audit: AuditLog,
        catalog: Callable[[], Catalog],
        *,
        prompts: ServiceSource | None = None,
        eval_passed: Callable[[str, int], Awaitable[bool]] | None = None,
        on_change: Callable[[], Awaitable[None]] | None = None,
        metrics: MetricSource | None = None,
        promote_alias: AliasPromotion | None = None,
    ) -> None:
        self._store = store
        self._audit = audit
        self._catalog = catalog
        self._prompts = prompts
        self._eval_passed = eval_passed
        self._on_change = on_change
        self._metrics = metrics
        self._promote_alias = promote_alias

    # -- reads -------------------------------------------------------------------------------

    def rollout(self, rollout_id: str) -> Rollout:
        found = self._catalog().rollouts.by_id.get(rollout_id)
        if found is None:
            raise NotFound(f"No rollout '{rollout_id}' in the applied policies (policies/rollouts.yaml).",
                           param="rollout", code="rollout_not_found")
        return found

    async def view(self, rollout_id: str) -> RolloutView:
        """One rollout's state and, with a metric source, each variant's numbers since its
        current step began (what the next checks will look at, fleet-wide)."""
        rollout = self.rollout(rollout_id)
        state = await self._store.get(rollout_id) or initial_state(rollout)
        live = None
        since = state.step_started_at or state.started_at
        if self._metrics is not None and since is not None:
            stats = await self._metrics.window(rollout_id, since)
            live = {name: found.summary() for name, found in sorted(stats.items()) if name}
        return RolloutView(rollout, state, live)

    async def views(self) -> list[RolloutView]:
        states = await self._store.all()
        return [RolloutView(rollout, states.get(rollout_id) or initial_state(rollout))
                for rollout_id, rollout in self._catalog().rollouts.by_id.items()]

    # -- changes -----------------------------------------------------------------------------

    async def start(self, rollout_id: str, caller: Caller, *, force: bool = False, reason: str | None = None,
                    ticket: str | None = None) -> RolloutView:
        """Run a pending (``start: manual``) or aborted rollout from its first step."""
        rollout = self.rollout(rollout_id)
        self._require_strong(rollout, caller, "Starting")
        forced = await self._gate(rollout, force=force, reason=reason)
        now = datetime.now(UTC)

        def change(state: RolloutState) -> RolloutState:
            # An auto rollout never stored yet is "running" only implicitly: starting it stores it.
            if state.status in ("running", "paused", "promoted") and state.revision > 0:
                raise Conflict(f"The rollout '{rollout_id}' is {state.status}; only a pending or aborted "
                               "rollout can be started.", code="rollout_state")
            return replace(state, status="running", step=0, failures=0, started_at=now, step_started_at=now)

        return await self._change(rollout, "start", change, caller, reason=reason, ticket=ticket, forced=forced)

    async def pause(self, rollout_id: str, caller: Caller, *, reason: str | None = None,
                    ticket: str | None = None) -> RolloutView:
        """Hold the current weight: the analysis neither advances nor rolls back."""
        rollout = self.rollout(rollout_id)
        caller.require("author", "approver", doing="Pausing a rollout")
        return await self._change(rollout, "pause", _from({"running"}, "paused", rollout_id), caller,
                                  reason=reason, ticket=ticket)

    async def resume(self, rollout_id: str, caller: Caller, *, reason: str | None = None,
                     ticket: str | None = None) -> RolloutView:
        rollout = self.rollout(rollout_id)
        caller.require("author", "approver", doing="Resuming a rollout")
        return await self._change(rollout, "resume", _from({"paused"}, "running", rollout_id), caller,
                                  reason=reason, ticket=ticket)

    async def abort(self, rollout_id: str, caller: Caller | None, *, reason: str | None = None,
                    ticket: str | None = None, detail: dict[str, Any] | None = None, fence: int = 0) -> RolloutView:
        """Roll back: the canary gets nothing any more, on every replica within a poll.
        ``caller`` None is the analysis (no role check; ``fence``: its lease generation);
        ``detail`` goes into the audit entry."""
        rollout = self.rollout(rollout_id)
        if caller is not None:
            self._require_strong(rollout, caller, "Aborting")
        return await self._change(rollout, "abort", _from({"pending", "running", "paused"}, "aborted", rollout_id),
                                  caller, reason=reason, ticket=ticket, detail=detail, fence=fence)

    async def promote(self, rollout_id: str, caller: Caller | None, *, force: bool = False,
                      reason: str | None = None, ticket: str | None = None,
                      detail: dict[str, Any] | None = None, fence: int = 0) -> RolloutView:
        """Make the canary the stable: for a prompt, move the label to the canary version."""
        rollout = self.rollout(rollout_id)
        if caller is not None:
            self._require_strong(rollout, caller, "Promoting")
        current = await self._current(rollout)
        if fence and current.fence > fence:
            raise StateConflict(rollout_id)  # a newer controller leads: this one moves nothing
        if current.status not in ("running", "paused"):
            raise Conflict(f"The rollout '{rollout_id}' is {current.status}; only a running or paused rollout "
                           "can be promoted.", code="rollout_state")
        if rollout.kind == "prompt":
            await self._move_label(rollout, caller, force=force, reason=reason, ticket=ticket)
        else:
            version = await self._rewrite_alias(rollout, caller, reason=reason, ticket=ticket)
            detail = {**(detail or {}), "policy_version": version}
        return await self._change(rollout, "promote", _from({"running", "paused"}, "promoted", rollout_id), caller,
                                  reason=reason, ticket=ticket, detail=detail, fence=fence)

    async def advance(self, rollout_id: str, *, detail: dict[str, Any] | None = None,
                      expected_revision: int | None = None, at: datetime | None = None,
                      fence: int = 0) -> RolloutView:
        """The analysis: move a running rollout to its next step (never past the last) at ``at``."""
        rollout = self.rollout(rollout_id)
        now = at or datetime.now(UTC)

        def change(state: RolloutState) -> RolloutState:
            if state.status != "running":
                raise Conflict(f"The rollout '{rollout_id}' is {state.status}.", code="rollout_state")
            if expected_revision is not None and state.revision != expected_revision:
                raise StateConflict(rollout_id)
            if state.step + 1 >= len(rollout.weights):
                raise Conflict(f"The rollout '{rollout_id}' is at its last step; promote it.", code="rollout_state")
            return replace(state, step=state.step + 1, failures=0, step_started_at=now)

        return await self._change(rollout, "advance", change, None, detail=detail, fence=fence)

    async def record(self, rollout_id: str, state: RolloutState, after: RolloutState, *,
                     fence: int = 0) -> RolloutState:
        """Store a change the analysis made itself (a check's verdict in the history); not audited."""
        return await self._store.put(state, after, fence=fence)

    # -- helpers -----------------------------------------------------------------------------

    async def _current(self, rollout: Rollout) -> RolloutState:
        return await self._store.get(rollout.id) or initial_state(rollout)

    def _protected(self, rollout: Rollout) -> bool:
        return rollout.kind == "prompt" and rollout.label in self._catalog().bundle.prompts.protected_labels

    def _require_strong(self, rollout: Rollout, caller: Caller, doing: str) -> None:
        if rollout.kind == "prompt" and not self._protected(rollout):
            caller.require("author", "approver", doing=f"{doing} a prompt rollout")
        elif rollout.kind == "prompt":
            caller.require("approver", doing=f"{doing} a rollout of the protected label '{rollout.label}'")
        else:
            caller.require("approver", doing=f"{doing} a model rollout")

    async def _gate(self, rollout: Rollout, *, force: bool, reason: str | None) -> bool:
        """Whether the evaluation gate was bypassed (forced); raises when it stops the start."""
        if not self._protected(rollout) or self._eval_passed is None:
            return False
        assert rollout.prompt is not None and rollout.canary_version is not None
        if await self._eval_passed(rollout.prompt, rollout.canary_version):
            return False
        if force and reason:
            return True
        if force:
            raise InvalidRequest("A forced start needs a reason (--reason); it goes into the audit log.",
                                 param="reason", code="reason_required")
        raise PermissionDenied(
            f"The canary {rollout.prompt}@v{rollout.canary_version} has no passing evaluation; run "
            f"`gateway prompts eval {rollout.prompt}@v{rollout.canary_version}` first (or force with a reason).",
            code="evaluation_required",
        )

    async def _move_label(self, rollout: Rollout, caller: Caller | None, *, force: bool, reason: str | None,
                          ticket: str | None) -> None:
        if self._prompts is None:
            raise InvalidRequest("The prompt repository is not available here to move the label.",
                                 code="prompts_unavailable")
        from gateway.prompts import Caller as PromptCaller

        assert rollout.prompt is not None and rollout.canary_version is not None
        mover = caller or PromptCaller.operator("rollout-controller")
        async with self._prompts() as service:
            await service.set_label(rollout.prompt, rollout.label, rollout.canary_version, mover, force=force,
                                    reason=reason or f"rollout {rollout.id} promoted", ticket=ticket)

    async def _rewrite_alias(self, rollout: Rollout, caller: Caller | None, *, reason: str | None,
                             ticket: str | None) -> int | None:
        from gateway.audit import Actor
        from gateway.config.yamlfile import ConfigError

        if self._promote_alias is None:
            raise InvalidRequest("The applied policies cannot be rewritten here to promote the canary.",
                                 code="policies_unavailable")
        actor = caller.actor if caller is not None else Actor(key_id="rollout-controller", team="system")
        try:
            return await self._promote_alias(rollout, actor, reason=reason, ticket=ticket)
        except ConfigError as exc:
            raise InvalidRequest("Promoting the canary would leave the policies invalid: "
                                 + "; ".join(exc.problems), code="rollout_promotion_invalid") from None

    async def _change(
        self,
        rollout: Rollout,
        action: str,
        change: Callable[[RolloutState], RolloutState],
        caller: Caller | None,
        *,
        reason: str | None = None,
        ticket: str | None = None,
        detail: dict[str, Any] | None = None,
        forced: bool = False,
        fence: int = 0,
    ) -> RolloutView:
        from gateway.audit import Actor

        before = await self._current(rollout)
        actor = caller.actor if caller is not None else Actor(key_id="rollout-controller", team="system")
        try:
            after = replace(change(before), actor=actor.key_id)
            stored = await self._store.put(before, after, fence=fence)
        except StateConflict:
            raise Conflict(f"The rollout '{rollout.id}' changed meanwhile; look at its status and try again.",
                           code="rollout_changed") from None
        await self._audit.append(
            actor, f"rollout.{action}" + (".forced" if forced else ""), f"rollout:{rollout.id}",
            before=_summary(rollout, before),
            after={**_summary(rollout, stored), **({"detail": detail} if detail else {})},
            reason=reason, ticket=ticket,
        )
        if self._on_change is not None:
            await self._on_change()
        return RolloutView(rollout, stored)


def _from(allowed: set[str], to: str, rollout_id: str) -> Callable[[RolloutState], RolloutState]:
    def change(state: RolloutState) -> RolloutState:
        if state.status not in allowed:
            final = " (final)" if state.status in FINAL else ""
            raise Conflict(f"The rollout '{rollout_id}' is {state.status}{final}; this needs it "
                           f"{' or '.join(sorted(allowed))}.", code="rollout_state")
        return replace(state, status=to)  # type: ignore[arg-type]

    return change


def _summary(rollout: Rollout, state: RolloutState) -> dict[str, Any]:
    share = state.weight_of(rollout)
    return {"status": state.status, "step": state.step, "weight": round((share or 0.0) * 100, 4),
            "revision": state.revision}


@contextlib.asynccontextmanager
async def using(service: PromptService) -> AsyncIterator[PromptService]:
    """A ``ServiceSource`` for a service that is already open (the server's)."""
    yield service
