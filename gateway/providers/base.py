"""The provider interface and the registry that picks one per deployment."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from gateway.context import Reply, RequestContext
from gateway.errors import UpstreamTooLarge

if TYPE_CHECKING:
    from gateway.catalog import Deployment


class Provider(Protocol):
    """Sends one attempt of a request to one deployment.

    Implementations raise ``UpstreamError`` subclasses (never their library's exceptions),
    set ``ctx.usage`` as soon as it is known, and for streams yield complete SSE events in
    OpenAI's chunk format. Retrying and falling back is the caller's job, not theirs.
    """

    async def chat(self, deployment: Deployment, ctx: RequestContext) -> Reply: ...

    async def embeddings(self, deployment: Deployment, ctx: RequestContext) -> Reply: ...

    async def close(self) -> None: ...


def answer_too_large(deployment: Deployment) -> UpstreamTooLarge:
    """The error for an answer past the deployment's ``max_answer_bytes`` (every provider's)."""
    return UpstreamTooLarge(
        f"The answer of upstream {deployment.label} is larger than the {deployment.max_answer_bytes} bytes "
        "this deployment reads (max_answer_bytes); ask for less (max_tokens, fewer inputs)."
    )


class ProviderRegistry:
    """One provider instance per wire protocol, created on first use.

    The litellm provider is created (and litellm imported) only when a deployment needs
    it, so a gateway serving only OpenAI-compatible upstreams never pays litellm's import.
    """

    def __init__(self, *, http_pool_size: int = 1000) -> None:
        self._providers: dict[str, Provider] = {}
        self._http_pool_size = http_pool_size

    def for_deployment(self, deployment: Deployment) -> Provider:
        kind = deployment.provider
        key = kind if kind in ("openai", "mock") else "litellm"
        provider = self._providers.get(key)
        if provider is None:
            provider = self._create(key)
            self._providers[key] = provider
        return provider

    def _create(self, key: str) -> Provider:
        if key == "openai":
            from gateway.providers.openai_compat import OpenAICompatProvider

            return OpenAICompatProvider(pool_size=self._http_pool_size)
        if key == "mock":
            from gateway.providers.mock import MockProvider

            return MockProvider()
        from gateway.providers.litellm_provider import LiteLLMProvider

        return LiteLLMProvider()

    def warm_up(self, providers: set[str]) -> None:
        """Create the providers a catalog needs at start-up, not on the first request."""
        for kind in providers:
            key = kind if kind in ("openai", "mock") else "litellm"
            if key not in self._providers:
                self._providers[key] = self._create(key)

    async def close(self) -> None:
        for provider in self._providers.values():
            await provider.close()
        self._providers.clear()
