"""What counting tokens costs: ``python -m benchmarks.token_count``.

The gateway counts tokens itself only when an upstream reported none (a stream cut before its
usage event, an upstream ignoring ``include_usage``) or when a prompt's exact size matters (see
``gateway.usage.tokens``). It counts first with the compact encoding (``gateway.usage.bpe``),
then with tiktoken's encoder once counting is frequent. This measures both, for one encoding:

- **build**: the wall time and the RSS it adds, each built in a fresh interpreter so that
  nothing else moves the reading;
- **count**: µs per token (the median of ``--rounds``, ``time.perf_counter``) on a few texts:
  prose (this repository's README), Python source, CJK and emoji, and the adversarial case, one
  long run of a single letter (one pre-token piece, the longest merge).

It also checks that the two counts agree on every text (a benchmark that counted wrong would
measure nothing).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

_BUILD = textwrap.dedent(
    """
    import json, resource, sys, time
    from gateway.usage.tokens import TokenCounter

    def rss():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * resource.getpagesize() / 2**20

    counter = TokenCounter()
    counter._check(sys.argv[2])  # the file is hashed first by the gateway too, not counted here
    before, started = rss(), time.perf_counter()
    if sys.argv[1] == "compact":
        counter.compact(sys.argv[2]).count("warm up")
    else:
        counter.encoding(sys.argv[2]).encode_ordinary("warm up")
    print(json.dumps({"seconds": time.perf_counter() - started, "rss_mib": rss() - before}))
    """
)


def _build(kind: str, encoding: str) -> dict[str, float]:
    out = subprocess.run([sys.executable, "-c", _BUILD, kind, encoding], capture_output=True, text=True,
                         check=True, cwd=ROOT, timeout=120)
    result: dict[str, float] = json.loads(out.stdout)
    return result


def _texts() -> dict[str, str]:
    return {
        "prose (README.md)": (ROOT / "README.md").read_text(),
        "Python (gateway/usage/tokens.py)": (ROOT / "gateway" / "usage" / "tokens.py").read_text(),
        "CJK and emoji": "日本語のテキスト、絵文字😀👍🏽と中文混合。한국어 텍스트입니다. " * 100,
        "one letter, 4,000 times": "a" * 4000,
    }


def _per_token(count: Callable[[str], int], text: str, rounds: int) -> float:
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        tokens = count(text)
        times.append((time.perf_counter() - started) / max(tokens, 1))
    return statistics.median(times) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--encoding", default="o200k_base")
    parser.add_argument("--rounds", type=int, default=7)
    options = parser.parse_args()

    from gateway.usage.tokens import TokenCounter

    print(f"{options.encoding}: build (a fresh interpreter each)")
    for kind in ("compact", "tiktoken"):
        built = _build(kind, options.encoding)
        print(f"  {kind:9s} {built['seconds']:.2f} s, +{built['rss_mib']:.1f} MiB RSS")

    counter = TokenCounter()
    compact = counter.compact(options.encoding)
    encoding = counter.encoding(options.encoding)
    print(f"count: µs per token, median of {options.rounds} (the compact memo of merged pieces cleared each time)")

    def compact_count(text: str) -> int:
        compact._memo.clear()  # measure the first count of a text, not a remembered one
        return compact.count(text)

    for name, text in _texts().items():
        tokens = len(encoding.encode_ordinary(text))
        if compact.count(text) != tokens:
            raise SystemExit(f"the counts differ on {name}: compact {compact.count(text)}, tiktoken {tokens}")
        fast = _per_token(lambda text: len(encoding.encode_ordinary(text)), text, options.rounds)
        slow = _per_token(compact_count, text, options.rounds)
        print(f"  {name:34s} {tokens:6,d} tokens: compact {slow:6.2f}, tiktoken {fast:5.2f} ({slow / fast:4.1f}x)")


if __name__ == "__main__":
    main()
