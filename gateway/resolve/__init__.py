"""Stage 4, resolve: see ``gateway.resolve.stage``."""

from gateway.resolve.stage import PROMPT_PREFIX, PromptResolver, Resolve, alias_for

__all__ = ["PROMPT_PREFIX", "PromptResolver", "Resolve", "alias_for"]
