"""The request fields OpenAI's API defines, per endpoint: all a caller may hand to litellm.

litellm's ``acompletion``/``aembedding`` take, beside OpenAI's fields, keyword arguments that
choose where a call goes and how it authenticates (``api_base``, ``base_url``, ``api_key``,
``extra_headers``, ``custom_llm_provider``, ``aws_*``, ``vertex_*``, ``azure_ad_token``, ...)
and more of them with every release. A deny-list of those would always be one release behind,
so the litellm provider passes a caller's field only when it is named here; where and how a
call goes comes from the deployment's configuration alone.

The lists are the properties of ``CreateChatCompletionRequest`` and ``CreateEmbeddingRequest``
in OpenAI's OpenAPI description (spec 2.3.0, 2026-08-21); ``tests/test_provider_steering.py``
checks them against the spec when it is at hand. Left out on purpose:

- ``metadata``: litellm reads its own ``metadata`` argument (for its callbacks and routing);
  OpenAI's meaning (tags for stored completions) does not apply to other providers anyway.
"""

from __future__ import annotations

from typing import Final

#: OpenAI's chat completion request fields, less ``metadata`` (see the module docstring).
CHAT_FIELDS: Final = frozenset({
    "audio", "frequency_penalty", "function_call", "functions", "logit_bias", "logprobs",
    "max_completion_tokens", "max_tokens", "messages", "modalities", "model", "moderation", "n",
    "parallel_tool_calls", "prediction", "presence_penalty", "prompt_cache_key", "prompt_cache_options",
    "prompt_cache_retention", "reasoning_effort", "response_format", "safety_identifier", "seed",
    "service_tier", "stop", "store", "stream", "stream_options", "temperature", "tool_choice", "tools",
    "top_logprobs", "top_p", "user", "verbosity", "web_search_options",
})

#: OpenAI's embeddings request fields.
EMBEDDING_FIELDS: Final = frozenset({"dimensions", "encoding_format", "input", "model", "user"})

#: What the allow-lists leave out of the spec's properties, and why (checked by the tests).
WITHHELD: Final = {"CreateChatCompletionRequest": frozenset({"metadata"}), "CreateEmbeddingRequest": frozenset()}
