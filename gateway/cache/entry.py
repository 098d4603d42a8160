"""A cached answer, and its compact byte form in Redis.

An entry is always a whole, successful, non-streamed JSON answer: streamed answers are
assembled into one before they are stored, so a streaming and a non-streaming caller share
it. The byte form is a fixed binary header followed by the answer's JSON exactly as it is
sent (zlib-compressed when large): a hit for a JSON caller is a header unpack and a slice,
with no JSON parsing at all.

    header  !BBdIIH  format, flags, created (unix s), prompt tokens, completion tokens,
                     length of the deployment id
    then    the deployment id (utf-8), then the body
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from typing import Any, Final

FORMAT: Final = 1
FLAG_ZLIB: Final = 1
_HEADER: Final = struct.Struct("!BBdIIH")
_MAX_TOKENS: Final = 2**32 - 1


@dataclass(frozen=True, slots=True)
class Entry:
    created: float  # unix time the answer was stored
    prompt_tokens: int
    completion_tokens: int
    deployment_id: str  # which deployment answered (prices the saved cost of a hit)
    body: bytes  # the whole JSON answer
    data: dict[str, Any] | None = None  # the parsed body, when already at hand (never stored)

    def age(self, now: float) -> float:
        return max(0.0, now - self.created)


def encode_entry(entry: Entry, compress_min: int) -> bytes:
    body = entry.body
    flags = 0
    if compress_min and len(body) >= compress_min:
        packed = zlib.compress(body, 1)  # level 1: most of the gain at a fraction of the CPU
        if len(packed) < len(body):
            body = packed
            flags |= FLAG_ZLIB
    deployment = entry.deployment_id.encode()[:65535]
    header = _HEADER.pack(
        FORMAT,
        flags,
        entry.created,
        min(entry.prompt_tokens, _MAX_TOKENS),
        min(entry.completion_tokens, _MAX_TOKENS),
        len(deployment),
    )
    return b"".join((header, deployment, body))


def decode_entry(raw: bytes) -> Entry:
    """Raises ``ValueError`` for bytes that are not an entry (foreign or corrupt values)."""
    try:
        version, flags, created, prompt, completion, id_length = _HEADER.unpack_from(raw)
    except struct.error:
        raise ValueError("cache value too short") from None
    if version != FORMAT:
        raise ValueError(f"unknown cache value format {version}")
    start = _HEADER.size + id_length
    deployment = raw[_HEADER.size : start].decode(errors="replace")
    body = raw[start:]
    if flags & FLAG_ZLIB:
        try:
            body = zlib.decompress(body)
        except zlib.error:
            raise ValueError("corrupt compressed cache value") from None
    return Entry(created, prompt, completion, deployment, body)
