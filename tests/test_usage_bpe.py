"""The compact token counter (``gateway.usage.bpe``) counts exactly what tiktoken counts.

It replaces tiktoken's encoder for the gateway's occasional counts (a cut stream, an answer
without usage), so a count it gets wrong is money charged wrong: every encoding the gateway can
load is checked against tiktoken on fixed texts chosen for the pre-tokenizer's corners, and on
generated ones. It must also be small (the reason it exists) and hand over to tiktoken's
encoder once counting is frequent or large (``TiktokenTokenizer``).
"""

from __future__ import annotations

import asyncio
import functools
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest
import tiktoken
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.usage import tokens as tokens_module
from gateway.usage.bpe import PATTERNS, CompactEncoding
from gateway.usage.tokens import (
    COMPACT_CHARACTERS,
    LARGE_TEXT_CHARACTERS,
    TiktokenTokenizer,
    TokenCounter,
    default_encodings_dir,
    encoding_file,
)

ROOT = Path(__file__).resolve().parents[1]
# The encodings litellm bundles (r50k_base is not among them).
ENCODINGS = ["o200k_base", "cl100k_base", "p50k_base"]

FIXED = [
    "",
    "x",
    " ",
    "Hello, world!",
    "I'm sure they'll've SAID it's 'quoted' — DON'T you THINK?",
    "日本語のテキスト、絵文字😀👍🏽と中文混合。한국어 텍스트. Ελληνικά και русский текст.",
    "e\u0301te\u0301 (combining marks) and ﬁ ligatures, zero\u200bwidth",
    "1234567890" * 30 + " 3.14159 -42 1e10 0x1F",
    "   \n\n\t  x  \r\n" * 20 + "trailing spaces   ",
    "a" * 3000,  # one piece of 3,000 bytes: the heap merge, where tiktoken's loop is quadratic
    "ab" * 1500 + "\n",
    "https://example.com/path/to/a?query=1&b=%20x#frag /slashes//and\\\\back",
    "def f(x: int) -> int:\n    return x ** 2  # squared\n\n\n",
    "{\"json\": [1, 2, {\"k\": null}], \"s\": \"\\u00e9\"}",
    "lone surrogate \ud800 and another \udfff end",  # tiktoken replaces each with U+FFFD
    "😀" * 50 + "🇫🇷🇩🇪" * 10,
]


@functools.cache
def _compact(name: str) -> CompactEncoding:
    directory = default_encodings_dir()
    assert directory is not None
    return CompactEncoding.load(name, encoding_file(directory, name))


@functools.cache
def _tiktoken(name: str) -> tiktoken.Encoding:
    return TokenCounter().encoding(name)


def _documents() -> list[str]:
    return [
        (ROOT / "README.md").read_text(),
        (ROOT / "docs" / "operations.md").read_text(),
        (ROOT / "gateway" / "usage" / "tokens.py").read_text(),
    ]


@pytest.mark.parametrize("name", [*ENCODINGS, "o200k_harmony", "p50k_edit"])
def test_the_pre_tokenizer_is_tiktokens_own(name: str) -> None:
    """The patterns are copied from tiktoken_ext (which builds them beside the ranks): the copy
    must be what a built encoding uses."""
    assert PATTERNS[name] == TokenCounter().encoding(name)._pat_str


@pytest.mark.parametrize("name", ENCODINGS)
def test_the_compact_count_is_tiktokens_on_fixed_texts(name: str) -> None:
    compact, encoding = _compact(name), _tiktoken(name)
    directory = default_encodings_dir()
    assert directory is not None
    lines = encoding_file(directory, name).read_bytes().splitlines()
    assert compact.tokens == sum(1 for line in lines if line.strip())  # every ranked token loaded
    for text in FIXED + _documents():
        assert compact.count(text) == len(encoding.encode_ordinary(text)), text[:60]


# Characters from every corner of the pre-tokenizers: letters of each case and script, marks,
# digits, apostrophes (contractions), punctuation, each kind of whitespace, emoji.
_CHARACTERS = "aAzZ09 '\n\r\t.,!?-_/\\\"ÉéßÆ日本한😀👍🏽\u0301\u00a0\u2028\u200b"
_TRICKY = st.sampled_from([*_CHARACTERS, "'s", "'LL", "\r\n"])


# Assigned characters only: the `regex` package's Unicode tables are newer than tiktoken's, and a
# code point assigned since (U+3D000 is a letter to `regex`, nothing to tiktoken: found by this
# test) can be split differently. Python's own tables (3.11: Unicode 14) are older than both.
_ASSIGNED = st.characters(exclude_categories=("Cn", "Cs"))


@pytest.mark.parametrize("name", ["o200k_base", "cl100k_base"])
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.one_of(st.text(_ASSIGNED, max_size=200), st.lists(_TRICKY, max_size=120).map("".join)))
def test_the_compact_count_is_tiktokens_on_generated_texts(name: str, text: str) -> None:
    assert _compact(name).count(text) == len(_tiktoken(name).encode_ordinary(text))


def test_the_compact_encoding_is_small() -> None:
    """Its reason to exist: o200k_base in ~6 MiB of RSS (tiktoken's encoder holds 40-50), built
    and measured in a fresh interpreter so nothing else moves the reading."""
    script = textwrap.dedent(
        """
        import resource, sys
        from gateway.usage.tokens import TokenCounter
        def rss():
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * resource.getpagesize() / 2**20
        counter = TokenCounter()
        before = rss()
        compact = counter.compact("o200k_base")
        assert compact.count("hello world, how are you today?") == 8
        print(rss() - before)
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert float(out.stdout) < 10.0


class _Recorder:
    def __init__(self) -> None:
        self.calls: list[str] = []

    def __call__(self, name: str) -> None:
        self.calls.append(name)


def test_the_tokenizer_asks_for_tiktoken_once_counting_is_frequent() -> None:
    recorder = _Recorder()
    tokenizer = TiktokenTokenizer(compact=_compact("cl100k_base"), on_busy=recorder)
    text = "word " * 1000  # 5,000 characters: under the large-text threshold
    for _ in range(COMPACT_CHARACTERS // len(text)):
        tokenizer.count_text(text)
    assert recorder.calls == [] and not tokenizer.fast  # occasional so far
    tokenizer.count_text(text)
    assert recorder.calls == ["cl100k_base"]
    tokenizer.count_text(text)
    assert recorder.calls == ["cl100k_base"]  # asked once
    expected = tokenizer.count_text(text)
    tokenizer.speed_up(_tiktoken("cl100k_base"))
    assert tokenizer.fast and tokenizer.count_text(text) == expected


def test_one_large_text_asks_for_tiktoken_at_once() -> None:
    recorder = _Recorder()
    tokenizer = TiktokenTokenizer(compact=_compact("cl100k_base"), on_busy=recorder)
    words = "word " * LARGE_TEXT_CHARACTERS
    tokenizer.count_text(words[:LARGE_TEXT_CHARACTERS])
    assert recorder.calls == []
    tokenizer.count_text(words[: LARGE_TEXT_CHARACTERS + 1])
    assert recorder.calls == ["cl100k_base"]


def test_a_busy_tokenizer_without_an_event_loop_gets_tiktoken_from_a_thread() -> None:
    """A count on a worker thread (no running loop) that makes the tokenizer busy starts the
    build on a thread of its own; the same tokenizer then counts with tiktoken."""
    counter = TokenCounter()
    counter.compact("cl100k_base")
    tokenizer = counter._tiktoken("cl100k_base")
    assert not tokenizer.fast and counter.encodings == set()
    text = "lorem ipsum " * 3000  # over the large-text threshold
    expected = len(_tiktoken("cl100k_base").encode_ordinary(text))
    assert tokenizer.count_text(text) == expected  # counted by the compact encoding meanwhile
    for thread in threading.enumerate():
        if thread.name == "tiktoken-cl100k_base":
            thread.join(30)
    assert tokenizer.fast and counter.encodings == {"cl100k_base"}
    assert tokenizer.count_text(text) == expected


async def test_a_busy_tokenizer_on_the_event_loop_builds_tiktoken_in_the_background() -> None:
    counter = TokenCounter()
    counter.compact("cl100k_base")
    tokenizer = counter._tiktoken("cl100k_base")
    tokenizer.count_text("lorem ipsum " * 3000)
    assert counter.building == {"tiktoken:cl100k_base"}  # a worker thread's flight, not awaited
    for _ in range(500):
        if not counter.building:
            break
        await asyncio.sleep(0.02)
    assert tokenizer.fast and counter.encodings == {"cl100k_base"}


def test_a_failed_tiktoken_build_leaves_the_compact_count(monkeypatch: pytest.MonkeyPatch,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    counter = TokenCounter()
    counter.compact("cl100k_base")
    tokenizer = counter._tiktoken("cl100k_base")

    def broken(name: str) -> tiktoken.Encoding:
        raise OSError("disk gone")

    monkeypatch.setattr(counter, "_load", broken)
    counter._speed_up_logged("cl100k_base")
    assert not tokenizer.fast and tokenizer.count_text("still counted") == 2
    assert "building tiktoken's encoder cl100k_base failed" in caplog.text
    assert tokens_module.log.name == "gateway.usage.tokens"


def test_a_piece_slow_to_merge_asks_for_tiktoken_at_once() -> None:
    """A long run of one letter is one piece, merged at ~8 µs a byte (30 times tiktoken): text
    made to be slow hands the counting to tiktoken at its first such piece."""
    recorder = _Recorder()
    tokenizer = TiktokenTokenizer(compact=_compact("cl100k_base"), on_busy=recorder)
    tokenizer.count_text("a" * 200 + " and some ordinary words after it")
    assert recorder.calls == []  # long, but not long enough to matter
    tokenizer.count_text("z" * 300)
    assert recorder.calls == ["cl100k_base"]
