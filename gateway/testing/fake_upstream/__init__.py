"""A fast fake OpenAI-compatible (and Anthropic) upstream for tests, benchmarks and the README.

Run it with ``python -m gateway.testing.fake_upstream --port 9999`` or embed ``FakeUpstream`` in any ASGI
server. Answers come from ``gateway.providers.mock_responses``, so they match the gateway's own
``mock`` provider exactly.
"""

from gateway.testing.fake_upstream.server import FakeUpstream, main, run

__all__ = ["FakeUpstream", "main", "run"]
