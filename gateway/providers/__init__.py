"""Upstream providers: one module per wire protocol, all behind the ``Provider`` interface.

- ``openai_compat``: the fast path for any OpenAI-compatible server (``http1``: pooled keep-alive connections);
- ``mock``: the built-in offline model (quick start, evaluations, tests);
- ``litellm_provider``: every other provider (Anthropic, ...), imported only when configured.
"""

from gateway.providers.base import Provider, ProviderRegistry

__all__ = ["Provider", "ProviderRegistry"]
