"""Prompt rollouts: which version of a prompt label a request is served.

The resolve stage renders the prompt, so the variant of a prompt rollout is chosen there, by
the same sticky draw as an alias rollout (``gateway.routing.rollout.assign``): ``stable`` keeps
the version the label points at, ``canary`` gets the rollout's canary version. The choice goes
on the context (``variant``, ``rollout_id``) and the route stage keeps it on the plan.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from gateway.rollouts.model import CANARY
from gateway.routing.rollout import assign

if TYPE_CHECKING:
    from gateway.context import RequestContext
    from gateway.rollouts.book import RolloutBook

log = logging.getLogger("gateway.rollouts")


class PromptRollouts:
    """Implements the prompt resolver's ``VersionChooser``."""

    __slots__ = ("_book", "_warned")

    def __init__(self, book: RolloutBook) -> None:
        self._book = book
        self._warned: set[tuple[str, int]] = set()

    def choose(self, ctx: RequestContext, name: str, label: str, latest: int) -> int | None:
        """The canary version when the request draws canary in a rollout of ``name@label``;
        None otherwise (serve the label's version). Sets ``ctx.variant`` and ``ctx.rollout_id``
        whenever the request takes part."""
        candidates = ctx.catalog.rollouts.by_prompt.get(name)
        if not candidates:
            return None
        for rollout in candidates:
            if rollout.label != label:
                continue
            weight = self._book.weight(rollout)
            if weight is None or not rollout.matches(ctx, label):
                continue
            version = rollout.canary_version
            assert version is not None
            if not 1 <= version <= latest:
                if (rollout.id, version) not in self._warned:
                    self._warned.add((rollout.id, version))
                    log.warning("a prompt rollout's canary version does not exist; serving the label",
                                extra={"rollout": rollout.id, "prompt": name, "version": version})
                return None
            variant = assign(rollout, ctx, weight)
            ctx.variant, ctx.rollout_id = variant, rollout.id
            return version if variant == CANARY else None
        return None
