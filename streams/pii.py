"""PII scrubbing: e-mail addresses, phone numbers, payment card numbers and IBANs become typed placeholders.

The promise: ``Scrubber.scrub`` takes time linear in the length of the text, whatever the text is, so that
no event can stall the ingest job. No pattern here can rescan a run of characters once per start position
(the old e-mail pattern did, and took time quadratic in the length of a run like ``a.a.a.a...``):

* e-mail addresses are found from their ``@``: each maximal run of local-part characters is scanned once,
  and only where it ends in ``@`` followed by a domain; the match then starts at the first word boundary
  of that run, as the plain pattern ``\\b[local]+@domain\\b`` would have it (the tests check the two agree);
* every other pattern repeats only a bounded number of times from a start position, or is anchored at the
  start of a run of digits and possessive, so that each run is scanned once;
* phonenumbers only ever sees short candidates (7-17 digits; each distinct one once per text), one parse
  per configured region, and at most ``MAX_PHONE_LOOKUPS`` candidates per text: past that, the remaining
  phone-shaped candidates are replaced unjudged, failing closed. (Run over a whole text instead, its
  ``PhoneNumberMatcher`` takes about 10 s per MB and region on prose, and silently stops looking after
  ``max_tries`` failed candidates.)

What is caught:

* e-mail addresses (``local@domain.tld``);
* IBANs that pass the ISO 13616 mod-97 check, written compactly or in groups of four;
* payment card numbers, 13-19 digits optionally grouped by spaces or hyphens, that pass the Luhn check;
* phone numbers written internationally (``+1 415-555-0132``, ``+49 (30) 1234 5678``), with a
  parenthesised area code (``(030) 1234 5678``), as ``415.555.0132`` / ``415-555-0132``, and in the national
  formats of the configured regions (``streams.pii_phone_regions``) that phonenumbers accepts at
  ``Leniency.VALID`` (``020 7946 0958`` in GB, ``030 12345678`` in DE, ``22 12 34 56`` in NO).

What is spared: a number must be written like a phone number, with a separator between digit groups, a
leading ``+`` or a parenthesised area code, so plain digit runs (order numbers such as ``2026112100123``,
even ``4155550132``) survive; so do card- and IBAN-shaped numbers that fail their check digits, dates
(``2026-11-21``, ``21.11.2026``, ``11/21/2026``), year ranges (``2010-2020``), times, decimals, amounts
and numbers glued to letters. A run of digit groups longer than any phone number is judged as a whole and
left alone; it is never split to look for a phone number inside it.

Runs before anything is indexed or trained on. Imports neither torch nor pyflink.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from functools import cache

import phonenumbers

from streamtune.settings import StreamsSettings

__all__ = ["DEFAULT_PHONE_REGIONS", "MAX_PHONE_LOOKUPS", "PLACEHOLDERS", "Scrubber", "scrub"]

PLACEHOLDERS = {"email": "[EMAIL]", "iban": "[IBAN]", "card": "[CARD]", "phone": "[PHONE]"}

# The one source of truth for the default is the settings field.
DEFAULT_PHONE_REGIONS: tuple[str, ...] = StreamsSettings.model_fields["pii_phone_regions"].default

# An e-mail's '@' with the maximal run of local-part characters before it (the lookbehind lets a match
# start only where such a run starts, and the possessive run never backtracks, so each run is scanned
# once), provided a domain follows. The domain is in a lookahead, so the next search starts right after
# the '@' and a run that begins inside this domain, before the next '@', is still found. Its segments are
# possessive: a segment can only be followed by '.', so it never needs to give characters back.
_EMAIL_AT = re.compile(
    r"(?<![A-Za-z0-9._%+-])[A-Za-z0-9._%+-]*+@"
    r"(?=([A-Za-z0-9-]++(?:\.[A-Za-z0-9-]++)*\.[A-Za-z]{2,}+\b))"
)
_WORD_BOUNDARY = re.compile(r"\b")

# Every repetition in the next three patterns is bounded, so each start position costs bounded work.
_IBAN = re.compile(r"\b[A-Z]{2}\d{2}(?:[ ]?[A-Z0-9]){11,30}\b")
_CARD = re.compile(r"\b\d(?:[ -]?\d){12,18}\b")
# International (+CC ...) or grouped national numbers with at least 7 digits; dates and plain
# integers do not match because a separator pattern or a leading + / ( is required.
_PHONE = re.compile(
    r"(?:(?<![\w+])\+\d{1,3}[\s.-]?(?:\(\d{1,4}\)[\s.-]?)?\d{1,4}(?:[\s.-]?\d{2,4}){1,4}(?!\w))"
    r"|(?:(?<!\w)\(\d{2,4}\)[\s.-]?\d{3,4}[\s.-]?\d{3,4}(?!\w))"
    r"|(?:(?<![\w-])\d{3}[.-]\d{3}[.-]\d{4}(?![\w-]))"
)

# A candidate for phonenumbers: a whole run of digit groups joined by single separators, with at least one
# separator or a parenthesised first group. It starts only where a run starts (not after a digit, a digit
# and a separator, a letter, a '+' that the international rule refused, or a currency or percent sign) and
# its groups are possessive, so each run is scanned once. A run followed by a letter, '%', a currency sign
# or a ',' / ':' and a digit (a decimal, a time) is not a candidate.
_SEPARATORS = r"[ \u00a0./-]"
_NATIONAL_CANDIDATE = re.compile(
    r"(?<![\w+$€£¥%])(?<!\d[ \u00a0.,:/-])"
    rf"(?:\(\d++\)[ \u00a0]?\d++(?:{_SEPARATORS}\d++)*+|\d++(?:{_SEPARATORS}\d++)++)"
    r"(?![\w$€£¥%])(?![,:]\d)"
)
_DROP_NON_DIGITS = str.maketrans("", "", " \u00a0./-()")
_MIN_DIGITS = 7
# E.164 allows 15 digits; an international prefix such as 00 may come before them.
_MAX_DIGITS = 17
# phonenumbers takes 0.1-0.5 ms to judge one candidate against ten regions; past this many distinct
# candidates in one text, the rest are replaced unjudged, which bounds the time a text can cost.
MAX_PHONE_LOOKUPS = 1000
_DATE = re.compile(
    r"\d{4}([./-])\d{1,2}\1\d{1,2}"  # 2026-11-21
    r"|\d{1,2}([./-])\d{1,2}\2\d{2}(?:\d{2})?"  # 21.11.2026, 11/21/26
    r"|(?:19|20)\d\d[/-](?:19|20)?\d\d"  # 2010-2020, 2024/25
)


def _phone_shaped(candidate: str) -> bool:
    if len(candidate) > 2 * _MAX_DIGITS + 2:  # more than _MAX_DIGITS digits, whatever the separators
        return False
    digits = len(candidate.translate(_DROP_NON_DIGITS))
    return _MIN_DIGITS <= digits <= _MAX_DIGITS and not _DATE.fullmatch(candidate)


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


_CHECKED_RULES: tuple[tuple[str, re.Pattern[str], Callable[[str], bool] | None], ...] = (
    ("iban", _IBAN, _iban_ok),
    ("card", _CARD, _luhn_ok),
    ("phone", _PHONE, None),
)


class Scrubber:
    """Replaces PII with typed placeholders; national phone formats are recognised for ``phone_regions``.

    Build one per job and reuse it: nothing is kept between calls, so ``scrub`` is pure. An unknown region
    raises ``ValueError`` naming it and the valid codes (the error type a pydantic validator reports
    against its field). ``max_phone_lookups``: distinct candidates per text judged by phonenumbers before
    the rest are replaced unjudged (see the module docstring).
    """

    def __init__(
        self, phone_regions: Sequence[str] = DEFAULT_PHONE_REGIONS, *, max_phone_lookups: int = MAX_PHONE_LOOKUPS
    ) -> None:
        unknown = [region for region in phone_regions if region not in phonenumbers.SUPPORTED_REGIONS]
        if unknown:
            raise ValueError(
                f"unknown phone region(s) {', '.join(map(repr, unknown))} in pii_phone_regions; valid: "
                f"the ISO 3166 alpha-2 codes phonenumbers knows: {', '.join(sorted(phonenumbers.SUPPORTED_REGIONS))}"
            )
        if max_phone_lookups < 0:
            raise ValueError(f"max_phone_lookups={max_phone_lookups} must be 0 or more")
        self.phone_regions: tuple[str, ...] = tuple(phone_regions)
        self.max_phone_lookups = max_phone_lookups

    def scrub(self, text: str) -> tuple[str, Counter[str]]:
        """The text with PII replaced, and how many of each kind were replaced."""
        found: Counter[str] = Counter()
        text = _replace_spans(text, _email_spans(text), "email", found)
        for kind, pattern, valid in _CHECKED_RULES:

            def _replace(match: re.Match[str], kind: str = kind, valid: Callable[[str], bool] | None = valid) -> str:
                if valid is not None and not valid(match.group(0)):
                    return match.group(0)
                found[kind] += 1
                return PLACEHOLDERS[kind]

            text = pattern.sub(_replace, text)
        if self.phone_regions:
            text = _replace_spans(text, self._national_phone_spans(text), "phone", found)
        return text, found

    def _national_phone_spans(self, text: str) -> Iterable[tuple[int, int]]:
        verdicts: dict[str, bool] = {}  # a number repeated in a text is judged once
        lookups_left = self.max_phone_lookups
        for match in _NATIONAL_CANDIDATE.finditer(text):
            candidate = match.group()
            verdict = verdicts.get(candidate)
            if verdict is None:
                if not _phone_shaped(candidate):
                    verdict = False
                elif lookups_left > 0:
                    lookups_left -= 1
                    verdict = self._is_phone(candidate)
                else:
                    # Lookups spent: a text this dense in phone-shaped numbers is a directory or bait, and
                    # scrubbing too much is the safe side.
                    verdict = True
                verdicts[candidate] = verdict
            if verdict:
                yield match.span()

    def _is_phone(self, candidate: str) -> bool:
        for region in self.phone_regions:
            try:
                number = phonenumbers.parse(candidate, region)
            except phonenumbers.NumberParseException:
                continue
            if not phonenumbers.is_valid_number(number):
                continue
            # Only a valid number pays for the matcher, which also asks how it is written: with the national
            # prefix where the region writes one (so 555-0132 is no German number), brackets that pair up,
            # not a date or a page range.
            # Only a match of the whole candidate counts: a part would leave digits of the number behind,
            # and might lack the separator that makes digits a phone number rather than an order number.
            matches = phonenumbers.PhoneNumberMatcher(candidate, region, leniency=phonenumbers.Leniency.VALID)
            if any(m.start == 0 and m.end == len(candidate) for m in matches):
                return True
        return False


@cache
def _default_scrubber() -> Scrubber:
    return Scrubber()


def scrub(text: str) -> tuple[str, Counter[str]]:
    """``Scrubber().scrub(text)`` with the default phone regions."""
    return _default_scrubber().scrub(text)


def _email_spans(text: str) -> Iterable[tuple[int, int]]:
    end = 0
    for match in _EMAIL_AT.finditer(text):
        at = match.end() - 1
        # A match may not begin inside the previous e-mail; like `\b[local]+@`, it begins at the first word
        # boundary of what is left of the run (the boundary looks at the character before the run too).
        boundary = _WORD_BOUNDARY.search(text, max(match.start(), end), at)
        if boundary is None or boundary.start() == at:
            continue
        end = match.end(1)
        yield boundary.start(), end


def _replace_spans(text: str, spans: Iterable[tuple[int, int]], kind: str, found: Counter[str]) -> str:
    pieces: list[str] = []
    last = 0
    for start, end in spans:
        pieces += (text[last:start], PLACEHOLDERS[kind])
        found[kind] += 1
        last = end
    if not pieces:
        return text
    pieces.append(text[last:])
    return "".join(pieces)
