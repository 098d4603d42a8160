"""Maskers: the kinds of personal data and secrets that redaction finds in trace content.

A masker is one kind of thing to find (an e-mail address, a card number...): a pattern that
finds candidates and, where the shape alone says too little, a check that keeps only real ones
(a Luhn check for card numbers, mod-97 for IBANs). Each default masker is a module of this
package; ``MASKERS`` names them, and ``tracing.maskers`` in ``gateway.yaml`` picks which run, in
order. A deployment adds its own with ``tracing.extra_maskers: ["package.module:NAME"]``, each
naming a :class:`Masker` (see ``load``).

What a masker finds is replaced by ``gateway.tracing.redaction``, as the team's policy says
(``[email]``, or ``[email#kfjhqmbd…]``, a keyed hash that correlates without revealing).
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from gateway.tracing.maskers.card import CARD
from gateway.tracing.maskers.email import EMAIL
from gateway.tracing.maskers.iban import IBAN
from gateway.tracing.maskers.ip import IP_ADDRESS
from gateway.tracing.maskers.phone import PHONE
from gateway.tracing.maskers.secret import SECRET

__all__ = ["DEFAULT_ORDER", "MASKERS", "Masker", "load"]


@dataclass(frozen=True, slots=True)
class Masker:
    """One kind of thing to find. ``valid`` (optional) confirms a candidate ``pattern`` matched;
    ``hints`` (optional) are substrings of which any match must contain one: text holding none
    of them is skipped without running the pattern (most text holds no key, no ``@``)."""

    name: str
    pattern: re.Pattern[str]
    valid: Callable[[str], bool] | None = None
    hints: tuple[str, ...] = ()

    def sub(self, text: str, replace: Callable[[str, str], str]) -> str:
        """``text`` with each confirmed match replaced by ``replace(self.name, match)``."""
        if self.hints and not any(hint in text for hint in self.hints):
            return text
        valid, name = self.valid, self.name

        def one(match: re.Match[str]) -> str:
            found = match.group(0)
            if valid is not None and not valid(found):
                return found
            return replace(name, found)

        return self.pattern.sub(one, text)


def _masker(spec: tuple[str, re.Pattern[str], Callable[[str], bool] | None, tuple[str, ...]]) -> Masker:
    return Masker(*spec)


#: The built-in maskers by name. Secrets run first, so a key is never half-masked as a phone number.
MASKERS: dict[str, Masker] = {spec[0]: _masker(spec) for spec in (SECRET, EMAIL, IBAN, CARD, IP_ADDRESS, PHONE)}
DEFAULT_ORDER: tuple[str, ...] = tuple(MASKERS)


def load(names: Iterable[str], extra: Iterable[str] = ()) -> list[Masker]:
    """The maskers to run: built-in ``names`` in order, then each ``module:attribute`` in ``extra``.

    Raises ``ValueError`` for an unknown name or an import path that does not name a Masker
    (start-up fails, rather than tracing content a policy meant to mask).
    """
    chosen: list[Masker] = []
    for name in names:
        if name not in MASKERS:
            raise ValueError(f"unknown masker {name!r}; built in: {', '.join(MASKERS)}")
        chosen.append(MASKERS[name])
    for path in extra:
        module_name, _, attribute = path.partition(":")
        if not module_name or not attribute:
            raise ValueError(f"extra masker {path!r}: expected 'package.module:NAME'")
        found = getattr(importlib.import_module(module_name), attribute, None)
        if not isinstance(found, Masker):
            raise ValueError(f"extra masker {path!r} is not a gateway.tracing.maskers.Masker")
        chosen.append(found)
    return chosen
