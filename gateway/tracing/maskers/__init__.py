r"""Maskers: the kinds of personal data and secrets that redaction finds in trace content.

A masker is one kind of thing to find (an e-mail address, a card number...): a pattern that
finds candidates and, where the shape alone says too little, a check that keeps only real ones
(a Luhn check for card numbers, mod-97 for IBANs). Each default masker is a module of this
package; ``MASKERS`` names them, and ``tracing.maskers`` in ``gateway.yaml`` picks which run, in
order. A deployment adds its own with ``tracing.extra_maskers: ["package.module:NAME"]``, each
naming a :class:`Masker` (see ``load``).

Speed: the maskers run over every traced input and output, so their patterns are written for
``re``'s fast scan. ``re`` skips ahead to the next position that can start a match only when a
pattern starts with a character or a character class; one that starts with a lookbehind (``\b``,
``(?<!\w)``) is tried at every position, 2 to 3 times slower. So the boundary checks come after
the first character (``\d(?<![\w.]\d)``, not ``(?<![\w.])\d``): the same matches, checked by a
test against the plain forms. Where no such form exists (IP addresses), a ``prefilter``, a
cheap pattern every match contains, skips text with none.

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

#: A default masker's module gives (name, pattern, valid, hints) and, optionally, a prefilter.
MaskerSpec = (
    tuple[str, re.Pattern[str], Callable[[str], bool] | None, tuple[str, ...]]
    | tuple[str, re.Pattern[str], Callable[[str], bool] | None, tuple[str, ...], re.Pattern[str]]
)


@dataclass(frozen=True, slots=True)
class Masker:
    """One kind of thing to find. ``valid`` (optional) confirms a candidate ``pattern`` matched;
    ``hints`` (optional) are substrings of which any match must contain one, and ``prefilter``
    (optional) a pattern that finds something in any match: text holding no hint, or in which
    the prefilter finds nothing, is skipped without running the pattern (most text holds no
    key, no ``@``, no IP address)."""

    name: str
    pattern: re.Pattern[str]
    valid: Callable[[str], bool] | None = None
    hints: tuple[str, ...] = ()
    prefilter: re.Pattern[str] | None = None

    def sub(self, text: str, replace: Callable[[str, str], str]) -> str:
        """``text`` with each confirmed match replaced by ``replace(self.name, match)``."""
        if self.hints:
            for hint in self.hints:  # a loop, not any(<generator>): half the cost on short text
                if hint in text:
                    break
            else:
                return text
        if self.prefilter is not None and self.prefilter.search(text) is None:
            return text
        valid, name = self.valid, self.name

        def one(match: re.Match[str]) -> str:
            found = match.group(0)
            if valid is not None and not valid(found):
                return found
            return replace(name, found)

        return self.pattern.sub(one, text)


def _masker(spec: MaskerSpec) -> Masker:
    name, pattern, valid, hints, *prefilter = spec
    return Masker(name, pattern, valid, hints, prefilter[0] if prefilter else None)


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
