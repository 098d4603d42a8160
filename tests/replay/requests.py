"""The replayed requests: sent one after another, in this order, to a freshly configured gateway.

Each request's ``name`` is also the ``x-request-id`` it is sent with (unless ``request_id`` is
False), which is how its ledger row is found. Fields:

- ``method`` (default ``POST``) and ``path`` (default ``/v1/chat/completions``);
- ``key``: the label of a key made at set-up (``config.KEYS``; default ``demo``), or None for no
  ``Authorization`` header; ``authorization`` sends that header value as it is instead;
- ``json`` (a body serialised compactly) or ``raw`` (a body sent byte for byte);
- ``headers``: extra request headers;
- ``faults``: queued on the fake upstream (``POST /_fake/faults``) just before the request;
- ``upstream_config``: the fake upstream's settings (``POST /_fake/config``) for this request alone;
- ``disconnect_after_events``: read that many SSE events, then hang up (the gateway records a 499);
- ``volatile_headers``: response headers whose value legitimately changes from run to run;
- ``volatile_ledger``: ledger columns whose value depends on timing for this request;
- ``note``: why the request is here.

Order matters where one request prepares the next (a cache miss before its hit). The mock model
and the fake upstream answer deterministically from the body, so every answer is reproducible.
"""

from __future__ import annotations

from typing import Any, Final, NotRequired, TypedDict


class Replay(TypedDict):
    name: str
    note: str
    method: NotRequired[str]
    path: NotRequired[str]
    key: NotRequired[str | None]
    authorization: NotRequired[str]
    json: NotRequired[Any]
    raw: NotRequired[str]
    headers: NotRequired[dict[str, str]]
    faults: NotRequired[list[dict[str, Any]]]
    upstream_config: NotRequired[dict[str, Any]]
    disconnect_after_events: NotRequired[int]
    volatile_headers: NotRequired[list[str]]
    volatile_ledger: NotRequired[list[str]]
    request_id: NotRequired[bool]


def _user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


_CHAT: Final = {"model": "mock", "messages": _user("Hello, gateway!")}
_CACHED: Final = {"model": "mock", "temperature": 0, "messages": _user("What is cached twice?")}
_CACHED_FAKE: Final = {"model": "gpt-4o-mini", "temperature": 0, "messages": _user("Stream me, then cache me.")}
_SUPPORT_VARIABLES: Final = {
    "question": "How long do I have to ask for a refund?",
    "context": [{"title": "Refunds", "text": "Annual plans can be refunded within 30 days of purchase."}],
}
_TOOLS: Final = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "The weather in a city.",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["c", "f"]}},
                "required": ["city"],
            },
        },
    }
]

REQUESTS: Final[list[Replay]] = [
    # -- the built-in mock provider ------------------------------------------------------------
    {"name": "mock-chat-json", "note": "mock provider, JSON answer, `user` recorded in the ledger",
     "json": {**_CHAT, "user": "alice"}},
    {"name": "mock-chat-stream", "note": "mock provider, SSE without usage",
     "json": {**_CHAT, "stream": True}},
    {"name": "mock-chat-stream-usage", "note": "mock provider, SSE with stream_options.include_usage",
     "json": {**_CHAT, "stream": True, "stream_options": {"include_usage": True}}},
    {"name": "mock-chat-limits", "note": "max_tokens truncation (finish_reason length), n=2, seed",
     "json": {"model": "mock", "messages": _user("one two three four five six seven"), "max_tokens": 4, "n": 2,
              "seed": 7}},
    {"name": "mock-embed", "note": "mock embeddings, two strings", "path": "/v1/embeddings",
     "json": {"model": "mock-embed", "input": ["first text", "second text"]}},
    {"name": "mock-embed-base64", "note": "mock embeddings, encoding_format base64", "path": "/v1/embeddings",
     "json": {"model": "mock-embed", "input": "one text", "encoding_format": "base64"}},
    {"name": "no-request-id", "note": "no x-request-id sent: the gateway makes one up (and echoes it)",
     "json": {**_CHAT, "messages": _user("Who names me?")}, "request_id": False},
    # -- an OpenAI-compatible deployment on the fake upstream ------------------------------------
    {"name": "fake-chat-json", "note": "OpenAI-compatible fast path; unknown field top_k passed through",
     "json": {"model": "gpt-4o-mini", "messages": _user("Hello, upstream!"), "top_k": 5, "n": 2}},
    {"name": "fake-chat-stream", "note": "fast path, SSE without usage",
     "json": {"model": "gpt-4o-mini", "messages": _user("Stream to me."), "stream": True}},
    {"name": "fake-chat-stream-usage", "note": "fast path, SSE with include_usage",
     "json": {"model": "gpt-4o-mini", "messages": _user("Stream with usage."), "stream": True,
              "stream_options": {"include_usage": True}}},
    {"name": "fake-chat-tools", "note": "function calling, tool_choice forced",
     "json": {"model": "gpt-4o", "messages": _user("Weather in Paris?"), "tools": _TOOLS,
              "tool_choice": {"type": "function", "function": {"name": "get_weather"}}}},
    {"name": "fake-embed", "note": "fast path embeddings", "path": "/v1/embeddings",
     "json": {"model": "text-embedding-3-small", "input": ["alpha", "beta"], "dimensions": 8}},
    {"name": "chat-default-alias", "note": "team-facing alias, primary deployment (support team)",
     "key": "support", "json": {"model": "chat-default", "messages": _user("Which deployment?")}},
    # -- prompts from the repository ------------------------------------------------------------
    {"name": "prompt-staging", "note": "prompt by label; variables rendered; x-prompt-* headers",
     "key": "support",
     "json": {"model": "prompt:support-answer@staging", "messages": [], "variables": _SUPPORT_VARIABLES}},
    {"name": "prompt-version-stream", "note": "prompt by version, streamed, with its response_format",
     "key": "support",
     "json": {"model": "prompt:support-triage@v1", "stream": True, "stream_options": {"include_usage": True},
              "variables": {"subject": "Invoice twice", "body": "I was charged twice this month."}}},
    {"name": "prompt-latest-override", "note": "caller overrides an allowed parameter, optional variable",
     "key": "support",
     "json": {"model": "prompt:support-answer@latest", "temperature": 0.5, "messages": _user("Thanks!"),
              "variables": {**_SUPPORT_VARIABLES, "customer_name": "Ada"}}},
    {"name": "prompt-no-production", "note": "bare prompt:NAME means production, which is not set: 404",
     "key": "support", "json": {"model": "prompt:support-answer", "variables": _SUPPORT_VARIABLES}},
    {"name": "prompt-unknown", "note": "no such prompt: 404", "key": "support",
     "json": {"model": "prompt:support-nothing", "variables": {}}},
    {"name": "prompt-bad-variables", "note": "a required variable missing: 400 invalid_variables",
     "key": "support",
     "json": {"model": "prompt:support-answer@staging", "variables": {"context": _SUPPORT_VARIABLES["context"]}}},
    {"name": "prompt-not-overridable", "note": "caller sets a parameter the prompt fixes: 400", "key": "support",
     "json": {"model": "prompt:support-triage@v1", "response_format": {"type": "text"},
              "variables": {"subject": "s", "body": "b"}}},
    {"name": "prompt-not-allowed", "note": "the team's policy does not allow the prompt: 403", "key": "broke",
     "json": {"model": "prompt:support-answer@staging", "variables": _SUPPORT_VARIABLES}},
    # -- the response cache (in-process store) ---------------------------------------------------
    {"name": "cache-miss", "note": "deterministic request, cache on: MISS", "key": "cached", "json": _CACHED},
    {"name": "cache-hit", "note": "the same body: HIT, age, cost 0 and saved_nanos in the ledger",
     "key": "cached", "json": _CACHED, "volatile_headers": ["age"]},
    {"name": "cache-hit-stream", "note": "the same body streamed: HIT replayed as SSE with usage",
     "key": "cached", "json": {**_CACHED, "stream": True, "stream_options": {"include_usage": True}},
     "volatile_headers": ["age"]},
    {"name": "cache-no-store", "note": "Cache-Control: no-store: BYPASS", "key": "cached", "json": _CACHED,
     "headers": {"cache-control": "no-store"}},
    {"name": "cache-sampling", "note": "no temperature (sampling): BYPASS", "key": "cached",
     "json": {"model": "mock", "messages": _user("What is cached twice?")}},
    {"name": "cache-stream-miss", "note": "fast path stream, MISS, stored when the stream ends", "key": "cached",
     "json": {**_CACHED_FAKE, "stream": True}},
    {"name": "cache-embed-miss", "note": "embeddings are always cacheable: MISS", "key": "cached",
     "path": "/v1/embeddings", "json": {"model": "text-embedding-3-small", "input": "cache this vector"}},
    {"name": "cache-stream-hit-json", "note": "the streamed answer served as JSON: HIT", "key": "cached",
     "json": _CACHED_FAKE, "volatile_headers": ["age"]},
    {"name": "cache-embed-hit", "note": "embeddings HIT", "key": "cached", "path": "/v1/embeddings",
     "json": {"model": "text-embedding-3-small", "input": "cache this vector"}, "volatile_headers": ["age"]},
    # -- errors at the edge ----------------------------------------------------------------------
    {"name": "no-key", "note": "no Authorization: 401, no ledger row", "key": None, "json": _CHAT},
    {"name": "bad-key", "note": "unknown key: 401", "authorization": "Bearer gw-not-a-real-key-000000000000",
     "json": _CHAT},
    {"name": "not-bearer", "note": "not a Bearer credential: 401", "authorization": "Basic dXNlcjpwYXNz",
     "json": _CHAT},
    {"name": "revoked-key", "note": "a revoked key: 401", "key": "revoked", "json": _CHAT},
    {"name": "unknown-model", "note": "unknown alias: 404 model_not_found", "json": {**_CHAT, "model": "gpt-9"}},
    {"name": "model-not-allowed", "note": "alias outside the team's policy: 403", "key": "support",
     "json": {**_CHAT, "model": "gpt-4o"}},
    {"name": "invalid-json", "note": "not JSON: 400 invalid_json", "raw": '{"model": "mock", "messages": [}'},
    {"name": "json-not-object", "note": "JSON but not an object: 400", "raw": '["mock"]'},
    {"name": "model-missing", "note": "no model: 400", "json": {"messages": _user("hi")}},
    {"name": "n-zero", "note": "n out of range: 400 invalid_value, param n", "json": {**_CHAT, "n": 0}},
    {"name": "stream-string", "note": 'stream="yes": 400', "json": {**_CHAT, "stream": "yes"}},
    {"name": "messages-missing", "note": "no messages: 400", "json": {"model": "mock"}},
    {"name": "messages-bad-role", "note": "a message without a role: 400, param messages[0].role",
     "json": {"model": "mock", "messages": [{"content": "hi"}]}},
    {"name": "embed-bad-input", "note": "embeddings input of mixed types: 400", "path": "/v1/embeddings",
     "json": {"model": "mock-embed", "input": ["text", 3]}},
    {"name": "embed-wrong-endpoint", "note": "a chat alias on /v1/embeddings: 400 wrong_endpoint",
     "path": "/v1/embeddings", "json": {"model": "mock", "input": "text"}},
    {"name": "too-large", "note": "body over server.max_body_bytes (64 KiB): 413",
     "json": {"model": "mock", "messages": _user("x" * 70_000)}},
    {"name": "unknown-path", "note": "unknown /v1 path: 404 unknown_url", "path": "/v1/completion", "json": _CHAT},
    {"name": "get-chat", "note": "GET on a POST endpoint: 405", "method": "GET"},
    {"name": "no-v1-prefix", "note": "POST /chat/completions: 404 pointing at /v1", "path": "/chat/completions",
     "json": _CHAT},
    {"name": "models-demo", "note": "GET /v1/models for a team that may call everything", "method": "GET",
     "path": "/v1/models"},
    {"name": "models-support", "note": "GET /v1/models: the team's aliases and prompts", "method": "GET",
     "path": "/v1/models", "key": "support"},
    {"name": "models-no-key", "note": "GET /v1/models without a key: 401", "method": "GET", "path": "/v1/models",
     "key": None},
    # -- budgets ----------------------------------------------------------------------------------
    {"name": "budget-exceeded", "note": "hard budget of 0: 429 budget_exceeded, ledger kind rejected",
     "key": "broke", "json": _CHAT, "volatile_headers": ["retry-after"]},
    {"name": "budget-free-model", "note": "a free deployment reserves nothing: admitted at budget 0",
     "key": "broke", "path": "/v1/embeddings", "json": {"model": "mock-embed", "input": "free"}},
    # -- upstream faults (the fake upstream's /_fake/faults) -------------------------------------
    {"name": "fault-500-retried", "note": "one 500, then the retry succeeds", "faults": [{"status": 500}],
     "json": {"model": "gpt-4o-mini", "messages": _user("Retry me.")}},
    {"name": "fault-429-passed-on", "note": "429 with retry-after and no retries left: passed on",
     "faults": [{"status": 429, "retry_after": "7"}],
     "json": {"model": "fake-noretry", "messages": _user("Throttle me.")}},
    {"name": "fault-500-exhausted", "note": "500 with no retries left: 502 upstream_status_5xx",
     "faults": [{"status": 500}], "json": {"model": "fake-noretry", "messages": _user("Fail me.")}},
    {"name": "fault-fallback", "note": "primary fails twice (retries 1): falls back to the mock deployment",
     "key": "support", "faults": [{"status": 503, "times": 2}],
     "json": {"model": "chat-default", "messages": _user("Fall back.")}},
    {"name": "fault-garbage", "note": "upstream answers HTML: 502 upstream_malformed_response",
     "faults": [{"garbage": True}], "json": {"model": "fake-noretry", "messages": _user("Garbage?")}},
    {"name": "fault-echoed-key", "note": "upstream echoes the provider key in its error: scrubbed",
     "faults": [{"status": 401, "echo_key": True}],
     "json": {"model": "fake-noretry", "messages": _user("Leak?")}},
    {"name": "fault-timeout", "note": "upstream slower than timeout_s 0.5: 504",
     "faults": [{"delay_ms": 1500}], "json": {"model": "fake-timeout", "messages": _user("Too slow.")}},
    {"name": "dead-upstream", "note": "nothing listens at the deployment's address: 503",
     "json": {"model": "dead-chat", "messages": _user("Anyone?")}},
    {"name": "mock-failure", "note": "mock deployment injecting 503 on every call",
     "json": {"model": "mock-broken", "messages": _user("Fail.")}},
    {"name": "stream-retried-before-first-byte", "note": "stream whose first attempt gets a 500: retried",
     "faults": [{"status": 500}],
     "json": {"model": "gpt-4o-mini", "messages": _user("Retry my stream."), "stream": True}},
    {"name": "stream-error-midway", "note": "upstream sends an in-band error after 3 events",
     "faults": [{"error_after_chunks": 3}],
     "json": {"model": "gpt-4o-mini", "messages": _user("Break midway."), "stream": True,
              "stream_options": {"include_usage": True}}},
    {"name": "stream-cut-midway", "note": "upstream closes the stream after 3 events without [DONE]",
     "faults": [{"disconnect_after_chunks": 3}],
     "json": {"model": "gpt-4o-mini", "messages": _user("Cut midway."), "stream": True}},
    {"name": "stream-garbage", "note": "upstream answers a stream request with HTML",
     "faults": [{"garbage": True}],
     "json": {"model": "fake-noretry", "messages": _user("Garbage stream?"), "stream": True}},
    {"name": "caller-hangs-up", "note": "the caller leaves mid-stream: upstream call cancelled, ledger 499",
     "upstream_config": {"chunk_delay_ms": 150}, "disconnect_after_events": 2,
     "json": {"model": "gpt-4o-mini", "messages": _user("I will not wait."), "stream": True},
     "volatile_ledger": ["completion_tokens", "cost_nanos"]},
    # -- after everything: the cache still serves, and a key's ledger user --------------------------
    {"name": "cache-hit-again", "note": "the first cached answer is still served at the end", "key": "cached",
     "json": _CACHED, "volatile_headers": ["age"]},
]
