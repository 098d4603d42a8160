"""Stage 3, parse: see ``gateway.parse.stage``."""

from gateway.parse.stage import MAX_DEPTH, ParseRequest, parse_body

__all__ = ["MAX_DEPTH", "ParseRequest", "parse_body"]
