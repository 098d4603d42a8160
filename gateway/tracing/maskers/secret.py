"""Key-shaped secrets: API keys whose form is known even when their value is not.

OpenAI and Anthropic keys (``sk-…``), the gateway's own (``gw-…``), Langfuse's (``pk-lf-…``,
``sk-lf-…``), AWS access key ids, GitHub, Slack, Google and Stripe tokens, JWTs and bearer
tokens. Redaction runs this one whatever the team's policy: an API key is never exported,
masked or not. Exact configured values (provider keys, the Langfuse secret) are scrubbed
besides, by ``gateway.redact``.
"""

from __future__ import annotations

import re

_CANDIDATE = re.compile(
    r"\b(?:sk-(?:ant-|proj-|lf-)?[A-Za-z0-9_\-]{6,}|gw-[A-Za-z0-9_\-]{8,}|pk-lf-[A-Za-z0-9\-]{6,}"
    r"|AKIA[0-9A-Z]{16}|gh[pousr]_[A-Za-z0-9]{20,}|github_pat_[A-Za-z0-9_]{20,}|xox[abprs]-[A-Za-z0-9\-]{10,}"
    r"|AIza[0-9A-Za-z_\-]{30,}|(?:sk|rk|pk)_(?:live|test)_[A-Za-z0-9]{10,}"
    r"|eyJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,})"
    r"|(?<=Bearer )[A-Za-z0-9_\-.=]{8,}"
)

#: Every shape above contains one of these (checked before the pattern runs: most text has none).
_HINTS = ("sk-", "gw-", "pk-lf-", "AKIA", "ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_", "xox", "AIza",
          "_live_", "_test_", "eyJ", "Bearer ")

SECRET = ("secret", _CANDIDATE, None, _HINTS)
