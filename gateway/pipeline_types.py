"""The shape every pipeline stage shares: ``async (ctx, call_next) -> Reply``."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol

from gateway.context import Reply, RequestContext

Handler = Callable[[RequestContext], Awaitable[Reply]]


class Stage(Protocol):
    async def __call__(self, ctx: RequestContext, call_next: Handler) -> Reply: ...
