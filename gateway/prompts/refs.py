"""Prompt references as callers and authors write them: ``NAME``, ``NAME@LABEL``, ``NAME@vN``."""

from __future__ import annotations

import re
from dataclasses import dataclass

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
# `vN` would be ambiguous with a version selector in `NAME@vN`.
VERSION_LIKE = re.compile(r"^v\d+$")

LABEL_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
LATEST = "latest"
PRODUCTION = "production"


@dataclass(frozen=True, slots=True)
class PromptRef:
    name: str
    label: str | None = None
    version: int | None = None

    def __str__(self) -> str:
        if self.version is not None:
            return f"{self.name}@v{self.version}"
        return f"{self.name}@{self.label}" if self.label else self.name


def parse_version(text: str) -> int | None:
    """``3`` or ``v3`` → 3; anything else → None."""
    digits = text[1:] if text[:1] in ("v", "V") else text
    return int(digits) if digits.isdigit() and int(digits) > 0 else None


def parse_reference(text: str, *, default_label: str | None = None) -> PromptRef:
    """Parse a reference; raises ``ValueError`` with a message naming what is wrong."""
    name, at, selector = text.partition("@")
    if not NAME_RE.match(name):
        raise ValueError(f"{name!r} is not a valid prompt name")
    if not at:
        return PromptRef(name, default_label)
    if VERSION_LIKE.match(selector):
        version = parse_version(selector)
        if version is None:
            raise ValueError(f"{selector!r} is not a valid version (versions start at v1)")
        return PromptRef(name, None, version)
    if not LABEL_RE.match(selector):
        raise ValueError(f"{selector!r} is not a valid label")
    return PromptRef(name, selector)


def label_problem(label: str) -> str | None:
    """Why ``label`` cannot be set by hand, or None."""
    if not LABEL_RE.match(label):
        return f"{label!r} is not a valid label (letters, digits, '.', '_' or '-')"
    if VERSION_LIKE.match(label):
        return f"{label!r} looks like a version selector; labels cannot be named vN"
    if label == LATEST:
        return "'latest' follows the newest version automatically and cannot be set"
    return None
