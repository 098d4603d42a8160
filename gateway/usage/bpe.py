"""An exact token counter for OpenAI's encodings in ~6 MiB, for the gateway's occasional counts.

tiktoken is fast (its Rust encoder, ~0.3 µs a token, outside the GIL) but one built encoding
holds 40-50 MiB for the life of the process. Most gateways count rarely: upstreams report usage,
and the gateway counts only a stream cut before its usage event, an answer from an upstream that
reports none, or a prompt whose exact size matters to a budget or a context window. Paying
50 MiB per replica for a handful of counts broke the memory target of the full benchmark profile
(issue 13: the first cut stream built o200k_base mid-soak).

:class:`CompactEncoding` gives the same counts as tiktoken's ``encode_ordinary`` from far less:

* the vocabulary is an open-addressing table of two ``array``s: each token's 64-bit hash
  (CPython's ``hash`` of its bytes, SipHash: the table is built in-process, so the per-process
  seed does not matter) and its rank. o200k_base's 200k tokens take 2^19 slots: 6 MiB. A
  piece of text absent from the vocabulary matches a token's hash with probability ~2^-45 per
  lookup; no text has been found that does.
* the text is split with the encoding's own pre-tokenizer pattern (the ``regex`` package, which
  tiktoken's pure-Python reference implementation uses too), and each piece not itself a token
  is merged the way tiktoken merges: the adjacent pair with the lowest rank first, the leftmost
  on ties. A heap makes it O(n log n) in the piece's length, where tiktoken's loop is quadratic;
  still, a long piece (a run of one letter) costs ~8 µs a byte, 30 times tiktoken's time.

One difference is known: the ``regex`` package's Unicode tables are newer than those of
tiktoken's Rust regex, so a code point assigned in between (U+3D000, a letter to one and
unassigned to the other) may be split into other pieces: such characters, absent from any text
written before their assignment, may be counted a token or two apart.

It costs more CPU than tiktoken (~1-4 µs a token in Python, measured in ``benchmarks/README.md``)
and holds the GIL while it counts, so ``gateway.usage.tokens`` uses it only until counting is
frequent or large enough to pay for tiktoken, and then builds tiktoken (see ``BpeTokenizer``).
``tests/test_usage_bpe.py`` checks it against tiktoken, on fixed texts and on generated ones.
"""

from __future__ import annotations

import binascii
import heapq
from array import array
from pathlib import Path
from typing import Final

import regex

# The pre-tokenizer patterns, as tiktoken_ext.openai_public defines them (it builds them inside
# the functions that also load the ranks, so they are copied here; a test checks each against
# the built tiktoken encoding's ``_pat_str``).
_R50K_PATTERN: Final = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""
_CL100K_PATTERN: Final = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|\s*[\r\n]|"""
    r"""\s+(?!\S)|\s"""
)
_O200K_PATTERN: Final = "|".join(
    [
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""\p{N}{1,3}""",
        r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""",
        r"""\s*[\r\n]+""",
        r"""\s+(?!\S)""",
        r"""\s+""",
    ]
)
#: Each encoding's pre-tokenizer pattern (the encodings ``gateway.usage.tokens`` can load).
PATTERNS: Final[dict[str, str]] = {
    "o200k_base": _O200K_PATTERN,
    "o200k_harmony": _O200K_PATTERN,
    "cl100k_base": _CL100K_PATTERN,
    "p50k_base": _R50K_PATTERN,
    "p50k_edit": _R50K_PATTERN,
    "r50k_base": _R50K_PATTERN,
}

_ABSENT: Final = -1
# Pieces that needed merging are remembered (words recur); bounded, then no longer filled.
_MEMO_SIZE: Final = 8192
_MEMO_PIECE_BYTES: Final = 64
#: A piece this long that is not a token costs ~8 µs a byte to merge (tiktoken: ~0.3): such pieces
#: are counted (``long_merges``), and the tokenizer hands over to tiktoken at the first one.
LONG_PIECE_BYTES: Final = 256


def _key(piece: bytes) -> int:
    # 0 marks an empty slot, so no key is 0 (one bit of the hash given up for it).
    return hash(piece) | 1


class CompactEncoding:
    """One encoding's exact token count (see the module docstring). Read-only once built, so
    threads may count with one at the same time."""

    __slots__ = ("_finditer", "_keys", "_mask", "_memo", "_ranks", "long_merges", "name", "tokens")

    def __init__(self, name: str, keys: array[int], ranks: array[int], tokens: int) -> None:
        self.name = name
        self.tokens = tokens
        self._keys = keys
        self._ranks = ranks
        self._mask = len(keys) - 1
        self._finditer = regex.compile(PATTERNS[name]).finditer
        self._memo: dict[bytes, int] = {}
        #: Pieces longer than LONG_PIECE_BYTES merged so far (racy across threads: a hint).
        self.long_merges = 0

    @classmethod
    def load(cls, name: str, path: Path) -> CompactEncoding:
        """Build from a ``.tiktoken`` file (one "base64-token rank" per line): ~0.4 s for o200k_base.

        The file is read into one buffer and walked line by line; no list of its 200k tokens is
        ever made (pymalloc would keep the arenas such a list filled: +29 MiB, measured).
        """
        data = path.read_bytes()
        lines = data.count(b"\n") + 1
        size = 1 << max(10, (2 * lines - 1).bit_length())  # load factor under 1/2
        keys = array("q", bytes(8 * size))
        ranks = array("I", bytes(4 * size))
        mask = size - 1
        tokens = 0
        start = 0
        end = len(data)
        while start < end:
            stop = data.find(b"\n", start)
            if stop < 0:
                stop = end
            space = data.find(b" ", start, stop)
            if space > start:
                key = _key(binascii.a2b_base64(data[start:space]))
                slot = key & mask
                while keys[slot]:
                    slot = (slot + 1) & mask
                keys[slot] = key
                ranks[slot] = int(data[space + 1 : stop])
                tokens += 1
            start = stop + 1
        return cls(name, keys, ranks, tokens)

    def rank(self, piece: bytes) -> int:
        """The token's rank, or -1 when ``piece`` is not a token."""
        key = _key(piece)
        keys = self._keys
        mask = self._mask
        slot = key & mask
        while True:
            found = keys[slot]
            if found == key:
                return self._ranks[slot]
            if not found:
                return _ABSENT
            slot = (slot + 1) & mask

    def count(self, text: str) -> int:
        """The number of tokens tiktoken's ``encode_ordinary(text)`` returns."""
        try:
            return self._count(text)
        except UnicodeEncodeError:
            # What tiktoken does with lone surrogates: each becomes U+FFFD.
            return self._count(text.encode("utf-16", "surrogatepass").decode("utf-16", "replace"))

    def _count(self, text: str) -> int:
        total = 0
        rank = self.rank
        memo = self._memo
        for match in self._finditer(text):
            piece = match.group().encode()
            if len(piece) == 1 or rank(piece) >= 0:
                total += 1
                continue
            found = memo.get(piece)
            if found is None:
                found = self._merge(piece)
                if len(piece) <= _MEMO_PIECE_BYTES:
                    if len(memo) < _MEMO_SIZE:
                        memo[piece] = found
                elif len(piece) > LONG_PIECE_BYTES:
                    self.long_merges += 1
            total += found
        return total

    def _merge(self, piece: bytes) -> int:
        """Tokens of a piece that is not itself a token: tiktoken's byte-pair merge, counted.

        Parts are a linked list of byte offsets; the heap holds (rank of the part with its next,
        offset). An entry is stale when its part was merged away or its next part changed; such
        entries are skipped when popped. Popping the lowest (rank, offset) is tiktoken's choice
        of the lowest rank, leftmost first.
        """
        rank = self.rank
        n = len(piece)
        following = list(range(1, n + 1))  # following[i]: where the part after i starts
        previous = list(range(-1, n))  # previous[i]: where the part before i starts
        alive = bytearray(b"\x01") * n
        heap = [(r, i) for i in range(n - 1) if (r := rank(piece[i : i + 2])) >= 0]
        heapq.heapify(heap)
        parts = n
        while heap:
            pair_rank, i = heapq.heappop(heap)
            if not alive[i]:
                continue
            j = following[i]
            if j >= n:
                continue
            k = following[j]
            if rank(piece[i:k]) != pair_rank:
                continue  # stale: part i or its next changed since this entry was pushed
            # Merge part j into part i.
            alive[j] = 0
            following[i] = k
            if k < n:
                previous[k] = i
            parts -= 1
            # The new pairs: (before i, i) and (i, after i).
            h = previous[i]
            if h >= 0:
                r = rank(piece[h:k])
                if r >= 0:
                    heapq.heappush(heap, (r, h))
            if k < n:
                r = rank(piece[i : following[k]])
                if r >= 0:
                    heapq.heappush(heap, (r, i))
        return parts
