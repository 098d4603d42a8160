"""Payment card numbers: 13 to 19 digits, optionally grouped by spaces or dashes, Luhn-checked.

The Luhn check keeps order numbers and other long digit runs that are not card numbers
(nine in ten random runs fail it).
"""

from __future__ import annotations

import re

# (?<![\w.])\d(?:[ \-]?\d){12,18}(?!\w), with the lookbehind after the first digit for re's fast
# scan (see the package docstring).
_CANDIDATE = re.compile(r"\d(?<![\w.]\d)(?:[ \-]?\d){12,18}(?![\w])")


#: A digit doubled, Luhn's way (a two-digit result's digits summed): 0 2 4 6 8 1 3 5 7 9.
_DOUBLED = str.maketrans("0123456789", "0246813579")
_ZERO = ord("0")


def luhn_valid(text: str) -> bool:
    """The Luhn check of a candidate (digits, spaces and dashes only, as the pattern finds them).

    With string operations that run in C (``translate``, and summing the ASCII bytes): every
    card-shaped number in every traced text goes through here, and a loop over the digits in
    Python cost ~3 µs a candidate."""
    digits = text.replace(" ", "").replace("-", "")
    if not digits.isascii():  # digits of another script (``\d`` finds them too): as their values
        try:
            digits = "".join(str(int(digit)) for digit in digits)
        except ValueError:  # '²' is a digit to ``\d`` but has no value of its own
            return False
    if not 13 <= len(digits) <= 19:
        return False
    kept, doubled = digits[-1::-2], digits[-2::-2].translate(_DOUBLED)
    total = sum(kept.encode()) + sum(doubled.encode()) - _ZERO * len(digits)
    return total % 10 == 0


CARD = ("card", _CANDIDATE, luhn_valid, ())
