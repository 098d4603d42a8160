"""``policies/shadows.yaml`` (optional): shadow traffic rules.

A shadow rule sends a copy of some callers' requests to another model (an alias) or another
prompt version (``prompt:NAME@vN``) after the caller has had its answer, and compares the two
answers. The caller never sees the copy. This module is the edge schema only: strict pydantic,
unknown keys refused, each field described. Cross-file checks (the aliases and the rollout
exist) happen when the catalog is built (``gateway.shadow.rules.build_shadow_index``).

Example::

    shadows:
      try-4o:
        description: How would gpt-4o answer chat-default's traffic?
        target: gpt-4o
        sample_rate: 0.05
        traffic: {alias: chat-default}
      answer-v4:
        target: prompt:support-answer@v4
        sample_rate: 0.2
        traffic: {prompt: support-answer, label: production}
      canary-vs-4o:
        target: gpt-4o
        sample_rate: 1.0
        traffic: {rollout: chat-default-4o, variant: canary}
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

RULE_ID = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
#: ``prompt:NAME@vN``: a shadow of a prompt always names one fixed version.
PROMPT_TARGET = re.compile(r"^prompt:([A-Za-z0-9][A-Za-z0-9._-]{0,99})@v([1-9][0-9]{0,8})$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ShadowTrafficSpec(_Strict):
    """Which callers' requests are copied: exactly one of ``alias``, ``prompt`` or ``rollout``."""

    alias: str | None = Field(None, description="Requests served by this model alias (prompts on it included).")
    prompt: str | None = Field(None, description="Requests for this prompt, asked by `label`.")
    label: str = Field("production", description="With `prompt`: the label asked for (prompt:NAME@LABEL).")
    rollout: str | None = Field(None, description="Requests taking part in this rollout (policies/rollouts.yaml).")
    variant: Literal["stable", "canary"] | None = Field(
        None, description="With `rollout`: only requests drawn into this variant (default: both)."
    )

    @model_validator(mode="after")
    def _exactly_one(self) -> ShadowTrafficSpec:
        given = [name for name in ("alias", "prompt", "rollout") if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of alias, prompt or rollout (given: {given or 'none'})")
        if self.variant is not None and self.rollout is None:
            raise ValueError("variant applies to a rollout only")
        return self


class ShadowRuleSpec(_Strict):
    description: str = ""
    target: str = Field(..., description="Where the copy goes: a chat model alias, or prompt:NAME@vN.")
    sample_rate: float = Field(
        ..., gt=0, le=1, description="Share of the matching requests copied (each drawn independently at random)."
    )
    # Not `on:`: YAML 1.1 (PyYAML) reads a bare `on` key as the boolean true.
    traffic: ShadowTrafficSpec = Field(..., description="Which requests are copied.")

    @model_validator(mode="after")
    def _target_shape(self) -> ShadowRuleSpec:
        if self.target.startswith("prompt:") and not PROMPT_TARGET.match(self.target):
            raise ValueError(f"target {self.target!r}: a prompt target is prompt:NAME@vN (one fixed version)")
        return self


class ShadowsFile(_Strict):
    shadows: dict[str, ShadowRuleSpec] = Field(default_factory=dict, description="Shadow rules by name.")

    @model_validator(mode="after")
    def _names(self) -> ShadowsFile:
        for name in self.shadows:
            if not RULE_ID.match(name):
                raise ValueError(f"shadow rule name {name!r}: lowercase letters, digits, '.', '_' and '-' (max 63)")
        return self
