"""litellm's heap is frozen once, where it is imported, whichever part of the gateway needs it first."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow  # imports litellm in a fresh interpreter (seconds)

SCRIPT = """
import gc, sys
from unittest import mock
from gateway.heap import import_litellm
assert "litellm" not in sys.modules
with mock.patch("gc.freeze", wraps=gc.freeze) as freeze:
    import gateway.providers.litellm_provider  # the provider's import pulls litellm in: frozen
    assert freeze.call_count == 1, freeze.call_count
    assert gc.get_freeze_count() > 100_000, gc.get_freeze_count()
    from gateway.usage.tokens import import_litellm as tokens_import
    assert tokens_import() is sys.modules["litellm"] and import_litellm() is sys.modules["litellm"]
    assert freeze.call_count == 1, freeze.call_count  # later callers freeze nothing more
print("ok")
"""


def test_litellm_is_imported_offline_and_frozen_once() -> None:
    result = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=120,
                            env={"PATH": "/usr/bin:/bin", "HOME": "/tmp"})
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-2000:]
