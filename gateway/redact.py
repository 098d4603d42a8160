"""Scrubbing secrets out of text that leaves the gateway (logs, errors, traces).

Keys are never logged on purpose; this is the second line of defence for text the gateway
does not control, such as an upstream's error message that echoes part of a key.
"""

from __future__ import annotations

import re

_SECRET_PATTERNS = re.compile(
    r"(gw-[A-Za-z0-9_\-]{8,}|sk-[A-Za-z0-9_\-*]{6,}|sk-ant-[A-Za-z0-9_\-]{6,}|"
    r"Bearer\s+[A-Za-z0-9_\-\.=]{8,}|pk-lf-[A-Za-z0-9\-]{6,}|sk-lf-[A-Za-z0-9\-]{6,})"
)


def redact(text: str) -> str:
    return _SECRET_PATTERNS.sub("[redacted]", text)
