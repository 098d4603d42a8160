"""Promoting a model rollout: the canary becomes the alias' own stable deployment, fleet-wide.

A model alias is policy (``models.yaml``), and every replica serves the latest *applied*
policy snapshot (``gateway.config.applied``). So a promotion writes the next snapshot, the
applied files with the alias rewritten, through ``PolicyStore.apply``: validated like any apply,
audited as ``policy.apply`` with its diff, and loaded by every replica's policy watcher within
a poll. The rewrite:

- ``canary: {deployment: N}``: deployment N takes the weight the others had together and they
  drop to weight 0, so they stay behind it as fallbacks (the list order, and so the rollout's
  index, is unchanged);
- ``canary: {alias: OTHER}``: the alias takes OTHER's deployments (a copy; OTHER stays).

The rollout itself stays in ``rollouts.yaml``, promoted: a promoted rollout routes nothing of
its own (``RolloutBook.weight``), the alias does. The policy files on disk still say what they
said: the rewritten ``models.yaml`` is in ``gateway policies status``' diff, and applying the
old files again would undo the promotion, so copy the change into them (the audit entry has it).
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

import yaml

from gateway.config.applied import PolicyStore
from gateway.errors import InvalidRequest

if TYPE_CHECKING:
    from gateway.audit import Actor
    from gateway.rollouts.model import Rollout

MODELS_FILE = "models.yaml"


def promoted_models(models: dict[str, Any], rollout: Rollout) -> dict[str, Any]:
    """``models.yaml`` (parsed) with the rollout's canary made its alias' stable deployment."""
    assert rollout.alias is not None
    result = copy.deepcopy(models)
    aliases = result.get("aliases") or {}
    alias = aliases.get(rollout.alias)
    canary = rollout.spec.target.canary
    if not isinstance(alias, dict) or not isinstance(alias.get("deployments"), list):
        raise InvalidRequest(
            f"The applied models.yaml has no alias '{rollout.alias}' to promote the canary into.",
            code="rollout_target_missing",
        )
    deployments: list[dict[str, Any]] = alias["deployments"]
    if canary.deployment is not None:
        index = canary.deployment
        if index >= len(deployments):
            raise InvalidRequest(
                f"The alias '{rollout.alias}' has no deployment {index} any more.", code="rollout_target_missing"
            )
        others = sum(float(d.get("weight", 1.0)) for i, d in enumerate(deployments) if i != index)
        weight = others or float(deployments[index].get("weight", 1.0)) or 1.0  # promoted before: keep it
        for i, deployment in enumerate(deployments):
            deployment["weight"] = weight if i == index else 0
    else:
        other = aliases.get(canary.alias)
        if not isinstance(other, dict) or not isinstance(other.get("deployments"), list):
            raise InvalidRequest(
                f"The applied models.yaml has no alias '{canary.alias}' to promote.", code="rollout_target_missing"
            )
        alias["deployments"] = copy.deepcopy(other["deployments"])
    return result


class AliasPromoter:
    """Writes the promotion as the next applied policy snapshot (see the module docstring)."""

    def __init__(self, policies: PolicyStore) -> None:
        self._policies = policies

    async def __call__(self, rollout: Rollout, actor: Actor, *, reason: str | None, ticket: str | None) -> int | None:
        """The new snapshot's version (None: the alias already served the canary)."""
        snapshot = await self._policies.latest()
        if snapshot is None or MODELS_FILE not in snapshot.files:
            raise InvalidRequest(
                "No applied policies to rewrite: run `gateway policies apply` first.", code="policies_not_applied"
            )
        models = yaml.safe_load(snapshot.files[MODELS_FILE]) or {}
        files = {
            **snapshot.files,
            MODELS_FILE: yaml.safe_dump(promoted_models(models, rollout), sort_keys=False, allow_unicode=True),
        }
        result = await self._policies.apply(
            files, actor, reason=reason or f"rollout {rollout.id} promoted", ticket=ticket
        )
        return result.version
