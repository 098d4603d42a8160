"""Stage 9, the terminal: call the provider (see ``gateway.upstream.stage``)."""

from gateway.upstream.stage import CallUpstream

__all__ = ["CallUpstream"]
