"""PII scrubbing: e-mail addresses, phone numbers, payment card numbers and IBANs become typed placeholders.

Card numbers must pass the Luhn check and IBANs the ISO 13616 mod-97 check, so that order numbers and
other long digit runs survive. Runs before anything is indexed or trained on.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable

__all__ = ["PLACEHOLDERS", "scrub"]

PLACEHOLDERS = {"email": "[EMAIL]", "iban": "[IBAN]", "card": "[CARD]", "phone": "[PHONE]"}

_EMAIL = re.compile(r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b")
_IBAN = re.compile(r"\b[A-Z]{2}\d{2}(?:[ ]?[A-Z0-9]){11,30}\b")
_CARD = re.compile(r"\b\d(?:[ -]?\d){12,18}\b")
# International (+CC ...) or grouped national numbers with at least 7 digits; dates and plain
# integers do not match because a separator pattern or a leading + / ( is required.
_PHONE = re.compile(
    r"(?:(?<![\w+])\+\d{1,3}[\s.-]?(?:\(\d{1,4}\)[\s.-]?)?\d{1,4}(?:[\s.-]?\d{2,4}){1,4}(?!\w))"
    r"|(?:(?<!\w)\(\d{2,4}\)[\s.-]?\d{3,4}[\s.-]?\d{3,4}(?!\w))"
    r"|(?:(?<![\w-])\d{3}[.-]\d{3}[.-]\d{4}(?![\w-]))"
)


def _luhn_ok(candidate: str) -> bool:
    digits = [int(c) for c in candidate if c.isdigit()]
    total = 0
    for i, digit in enumerate(reversed(digits)):
        if i % 2 == 1:
            digit *= 2
            if digit > 9:
                digit -= 9
        total += digit
    return total % 10 == 0


def _iban_ok(candidate: str) -> bool:
    compact = candidate.replace(" ", "")
    if not 15 <= len(compact) <= 34:
        return False
    rearranged = compact[4:] + compact[:4]
    number = "".join(str(int(c, 36)) for c in rearranged)
    return int(number) % 97 == 1


_RULES: tuple[tuple[str, re.Pattern[str], Callable[[str], bool] | None], ...] = (
    ("email", _EMAIL, None),
    ("iban", _IBAN, _iban_ok),
    ("card", _CARD, _luhn_ok),
    ("phone", _PHONE, None),
)


def scrub(text: str) -> tuple[str, Counter[str]]:
    """The text with PII replaced, and how many of each kind were replaced."""
    found: Counter[str] = Counter()
    for kind, pattern, valid in _RULES:

        def _replace(match: re.Match[str], kind: str = kind, valid: Callable[[str], bool] | None = valid) -> str:
            if valid is not None and not valid(match.group(0)):
                return match.group(0)
            found[kind] += 1
            return PLACEHOLDERS[kind]

        text = pattern.sub(_replace, text)
    return text, found
