"""Payment card numbers: 13 to 19 digits, optionally grouped by spaces or dashes, Luhn-checked.

The Luhn check keeps order numbers and other long digit runs that are not card numbers
(nine in ten random runs fail it).
"""

from __future__ import annotations

import re

# (?<![\w.])\d(?:[ \-]?\d){12,18}(?!\w), with the lookbehind after the first digit for re's fast
# scan (see the package docstring).
_CANDIDATE = re.compile(r"\d(?<![\w.]\d)(?:[ \-]?\d){12,18}(?![\w])")


def luhn_valid(text: str) -> bool:
    digits = [int(c) for c in text if c.isdigit()]
    if not 13 <= len(digits) <= 19:
        return False
    total = 0
    for index, digit in enumerate(reversed(digits)):
        if index % 2 == 1:
            digit *= 2
            if digit > 9:
                digit -= 9
        total += digit
    return total % 10 == 0


CARD = ("card", _CANDIDATE, luhn_valid, ())
