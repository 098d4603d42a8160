"""International bank account numbers: country code, two check digits, up to 30 letters and
digits (optionally in groups of four), kept only when the ISO 13616 mod-97 check holds."""

from __future__ import annotations

import re

# \b[A-Z]{2}\d{2}(?: ?[A-Z0-9]){11,30}\b, with the word boundary checked after the first letter
# for re's fast scan (see the package docstring).
_CANDIDATE = re.compile(r"[A-Z](?<!\w[A-Z])[A-Z]\d{2}(?: ?[A-Z0-9]){11,30}\b")


def iban_valid(text: str) -> bool:
    compact = text.replace(" ", "")
    if not 15 <= len(compact) <= 34:
        return False
    rearranged = compact[4:] + compact[:4]
    digits = "".join(str(int(c, 36)) for c in rearranged)  # A=10 ... Z=35
    return int(digits) % 97 == 1


IBAN = ("iban", _CANDIDATE, iban_valid, ())
