"""Phone numbers: 7 to 15 digits (E.164's range), with an optional ``+`` and the usual
separators (spaces, dots, dashes, parentheses).

Plain numbers are not phone numbers: a candidate that looks like an ISO date or a decimal
(one dot, no other separator) is kept.
"""

from __future__ import annotations

import re

# (?<![\w+.\-])(?:\+|\(\+?)?\d[\d ().\-]{5,22}\d(?!\w), written to start with its first character
# for re's fast scan (see the package docstring): a "+", "(" or digit, the boundary checked
# behind it, then what may follow that character.
_CANDIDATE = re.compile(r"[+(\d](?<![\w+.\-].)(?:(?<=\+)\d|(?<=\()\+?\d|(?<=\d))[\d ().\-]{5,22}\d(?![\w])")
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")


_NO_DIGITS = str.maketrans("", "", "0123456789")


def phone_valid(text: str) -> bool:
    # String operations that run in C, not a loop over the characters (see ``card.luhn_valid``).
    # Digits of another script (``\d`` finds them too) the slow way.
    separators = (text.translate(_NO_DIGITS) if text.isascii()
                  else "".join(c for c in text if not c.isdigit()))
    digits = len(text) - len(separators)
    if not 7 <= digits <= 15:
        return False
    if _DATE.fullmatch(text):
        return False
    return set(separators) != {"."} or separators.count(".") > 1


PHONE = ("phone", _CANDIDATE, phone_valid, ())
