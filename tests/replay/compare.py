"""Compare two replay recordings and say, readably, where they first differ.

``python -m tests.replay.compare EXPECTED ACTUAL`` exits 1 and prints the differences when the two
JSON documents differ (for instance the recording of the old tree and of the new one).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

_MISSING = object()


def _short(value: Any, limit: int = 300) -> str:
    if value is _MISSING:
        return "<missing>"
    text = json.dumps(value, ensure_ascii=False, sort_keys=True)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _label(document: Any, index: int) -> str:
    """``requests[3]`` reads better as ``requests[3 mock-embed]``."""
    try:
        return f"{index} {document[index]['name']}"
    except (KeyError, TypeError, IndexError):
        return str(index)


def differences(expected: Any, actual: Any, path: str = "") -> Iterator[str]:
    """Every place where ``actual`` differs from ``expected``, as ``path: expected != actual``."""
    if isinstance(expected, dict) and isinstance(actual, dict):
        for key in sorted(set(expected) | set(actual), key=str):
            yield from differences(expected.get(key, _MISSING), actual.get(key, _MISSING), f"{path}.{key}")
        return
    if isinstance(expected, list) and isinstance(actual, list):
        for index in range(max(len(expected), len(actual))):
            left = expected[index] if index < len(expected) else _MISSING
            right = actual[index] if index < len(actual) else _MISSING
            named = expected if left is not _MISSING else actual
            yield from differences(left, right, f"{path}[{_label(named, index)}]")
        return
    if expected is _MISSING or actual is _MISSING or type(expected) is not type(actual) or expected != actual:
        yield f"{path.lstrip('.')}:\n    expected {_short(expected)}\n    actual   {_short(actual)}"


def report(expected: Any, actual: Any, limit: int = 20) -> str:
    """The first ``limit`` differences, or an empty string when the documents are equal."""
    found = list(differences(expected, actual))
    if not found:
        return ""
    shown = "\n".join(found[:limit])
    more = f"\n... and {len(found) - limit} more" if len(found) > limit else ""
    return f"{len(found)} difference(s):\n{shown}{more}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.replay.compare", description=__doc__)
    parser.add_argument("expected", type=Path)
    parser.add_argument("actual", type=Path)
    parser.add_argument("--limit", type=int, default=40, help="differences to print")
    args = parser.parse_args(argv)
    text = report(json.loads(args.expected.read_text()), json.loads(args.actual.read_text()), args.limit)
    if text:
        print(text)
        return 1
    print("identical")
    return 0


if __name__ == "__main__":
    sys.exit(main())
