"""Each rollout's live canary weight, as the request path reads it: one dict lookup.

The weight comes from the rollout's stored state (``gateway.rollouts.state``): the current
step's weight while it runs or is paused; none before it started, once aborted, or once
promoted (its requests route as if there were no rollout: after a rollback to stable, after a
promotion to what the label or the alias now serves, the canary). The book is replaced whole
when a replica notices a change (``RolloutBook.use``), so a request sees the old or the new
weights, never a mix. A rollout with no stored state yet runs at its first step when its
policy says ``start: auto`` and is idle when ``start: manual``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gateway.rollouts.model import Rollout
    from gateway.rollouts.state import RolloutState


class RolloutBook:
    __slots__ = ("_states",)

    def __init__(self, states: dict[str, RolloutState] | None = None) -> None:
        self._states: dict[str, RolloutState] = states or {}

    def use(self, states: dict[str, RolloutState]) -> None:
        self._states = states  # one reference swap

    def state(self, rollout_id: str) -> RolloutState | None:
        return self._states.get(rollout_id)

    def weight(self, rollout: Rollout) -> float | None:
        """The canary's share in [0, 1] for this rollout, or None when it routes nothing
        (not started, aborted, or finished): its requests are routed as if it did not exist."""
        state = self._states.get(rollout.id)
        if state is None:
            return rollout.weights[0] if rollout.spec.start == "auto" else None
        if state.status == "promoted":
            return None  # the label, or the alias, serves the canary itself now
        return state.weight_of(rollout)
