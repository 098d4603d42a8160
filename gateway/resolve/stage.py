"""Stage 4, resolve: the requested ``model`` becomes a model alias (or a prompt version).

``model: "gpt-4o-mini"`` names an alias from ``policies/models.yaml``; ``model: "prompt:NAME"``
names a prompt in the repository, which a ``PromptResolver`` renders into messages and maps to
its own alias. Both go through the team's policy: an alias the team may not use is a 403, an
unknown one a 404.
"""

from __future__ import annotations

from typing import Protocol

from gateway.catalog import ModelAlias
from gateway.context import Endpoint, Reply, RequestContext
from gateway.errors import InvalidRequest, NotFound, PermissionDenied
from gateway.pipeline_types import Handler

PROMPT_PREFIX = "prompt:"


_LIST_HINT = "; GET /v1/models lists the models and prompts this key may call."


class PromptResolver(Protocol):
    """Renders ``prompt:NAME[@LABEL|@vN]`` into ``ctx.body`` and returns the alias to call."""

    async def resolve(self, ctx: RequestContext, reference: str) -> str: ...


def _article(word: str) -> str:
    return "an" if word[:1] in "aeiou" else "a"


def alias_for(ctx: RequestContext, name: str) -> ModelAlias:
    alias = ctx.catalog.aliases.get(name)
    if alias is None:
        raise NotFound(f"The model '{name}' does not exist{_LIST_HINT}", param="model")
    team = ctx.catalog.team(ctx.team)
    if team is None or not team.allows_model(name):
        raise PermissionDenied(f"Team '{ctx.team}' may not use the model '{name}'.", param="model")
    wanted = "chat" if ctx.endpoint is Endpoint.CHAT else "embedding"
    if alias.kind != wanted:
        raise InvalidRequest(
            f"The model '{name}' is {_article(alias.kind)} {alias.kind} model and cannot serve this endpoint.",
            param="model",
            code="wrong_endpoint",
        )
    return alias


class Resolve:
    def __init__(self, prompts: PromptResolver | None = None) -> None:
        self._prompts = prompts

    async def __call__(self, ctx: RequestContext, call_next: Handler) -> Reply:
        name = ctx.requested_model
        if name.startswith(PROMPT_PREFIX):
            if self._prompts is None or ctx.endpoint is not Endpoint.CHAT:
                raise NotFound(f"The model '{name}' does not exist{_LIST_HINT}", param="model")
            name = await self._prompts.resolve(ctx, name.removeprefix(PROMPT_PREFIX))
        ctx.alias = alias_for(ctx, name)
        return await call_next(ctx)
