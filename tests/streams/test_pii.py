from __future__ import annotations

import random
import re

import pytest

from streams.pii import PLACEHOLDERS, Scrubber, scrub


@pytest.mark.parametrize(
    ("text", "expected", "kind"),
    [
        ("write to jane.doe+billing@mail.acme.co.uk today", "write to [EMAIL] today", "email"),
        ("call +1 415-555-0132 now", "call [PHONE] now", "phone"),
        ("call +49 (30) 1234 5678 now", "call [PHONE] now", "phone"),
        ("call (030) 1234 5678 now", "call [PHONE] now", "phone"),
        ("call 415.555.0132 now", "call [PHONE] now", "phone"),
        ("card 4111 1111 1111 1111 expires", "card [CARD] expires", "card"),
        ("card 5500-0000-0000-0004 expires", "card [CARD] expires", "card"),
        ("iban DE89 3704 0044 0532 0130 00 please", "iban [IBAN] please", "iban"),
        ("iban GB82WEST12345698765432 please", "iban [IBAN] please", "iban"),
    ],
)
def test_pii_is_replaced_by_typed_placeholders(text: str, expected: str, kind: str) -> None:
    scrubbed, found = scrub(text)
    assert scrubbed == expected
    assert found == {kind: 1}


@pytest.mark.parametrize(
    "text",
    [
        "order 1234 5678 9012 3456 shipped",  # fails the Luhn check: not a card
        "DE00 3704 0044 0532 0130 00 is not a valid IBAN",  # fails mod-97
        "released 2026-11-21, version 1.2.3, 30 days, SKU 12345678",
        "room 101, floor 3, 555-0132 is an extension",
        # Plain digit runs, even ones phonenumbers would accept (a US number, an order number).
        "order 2026112100123, ref 4155550132, tracking 07946095800",
        "dates 21.11.2026, 11/21/2026 and 2026/11/21, seasons 2010-2020 and 2024/25",
        "1 000 000 users at 12:30 paid 1.234.567,89 EUR from 192.168.1.10, ISBN 978-3-16-148410-0",
        "ID020 7946 0958 is glued to letters, 020 7946 0958% to a percent sign",
    ],
)
def test_ordinary_numbers_survive(text: str) -> None:
    assert scrub(text) == (text, {})


@pytest.mark.parametrize(
    ("number", "region"),
    [
        ("020 7946 0958", "GB"),
        ("415 555 0132", "US"),
        ("(415) 555-0132", "US"),
        ("030 12345678", "DE"),
        ("0171 1234567", "DE"),
        ("22 12 34 56", "NO"),
        ("01 23 45 67 89", "FR"),
        ("06-12345678", "NL"),
        ("912 34 56 78", "ES"),
        ("08-123 456 78", "SE"),
    ],
)
def test_national_formats_are_caught_for_configured_regions(number: str, region: str) -> None:
    text = f"ring {number}, thanks"
    assert Scrubber([region]).scrub(text) == ("ring [PHONE], thanks", {"phone": 1})
    assert scrub(text) == ("ring [PHONE], thanks", {"phone": 1})  # every one is in the default regions


@pytest.mark.parametrize(
    ("number", "other_region"),
    [("020 7946 0958", "US"), ("22 12 34 56", "GB"), ("415 555 0132", "DE"), ("030 12345678", "NO")],
)
def test_a_national_number_is_caught_only_when_its_region_is_configured(number: str, other_region: str) -> None:
    assert Scrubber([other_region]).scrub(f"ring {number}") == (f"ring {number}", {})


def test_without_regions_only_international_and_grouped_numbers_are_caught() -> None:
    scrubbed, found = Scrubber([]).scrub("ring +47 22 12 34 56 or 22 12 34 56 or (030) 1234 5678")
    assert scrubbed == "ring [PHONE] or 22 12 34 56 or [PHONE]"
    assert found == {"phone": 2}


def test_an_unknown_region_is_refused_with_the_valid_ones() -> None:
    with pytest.raises(ValueError, match=r"'XX', 'gb'.*valid: .*\bGB\b.*\bNO\b.*\bUS\b"):
        Scrubber(["GB", "XX", "gb"])


def test_a_negative_lookup_budget_is_refused() -> None:
    with pytest.raises(ValueError, match="max_phone_lookups=-1"):
        Scrubber(max_phone_lookups=-1)


def test_once_the_lookups_are_spent_phone_shaped_numbers_are_scrubbed_unjudged() -> None:
    # Neither 16-digit number is a card (Luhn) or a phone; only the first is judged. A number seen before
    # keeps its verdict without a lookup, and dates and plain digit runs never cost one.
    text = "on 2026-11-21: 1234 5678 9012 3456, 1234 5678 9012 3456 and 1234 5678 9012 3457, 12345678"
    scrubbed, found = Scrubber(max_phone_lookups=1).scrub(text)
    assert scrubbed == "on 2026-11-21: 1234 5678 9012 3456, 1234 5678 9012 3456 and [PHONE], 12345678"
    assert found == {"phone": 1}


# The e-mail pattern before issue 8: right, but quadratic on runs of local-part characters.
_REFERENCE_EMAIL = re.compile(r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b")


# Short texts over small alphabets (no digits, so that no other kind of PII can appear) reach every case:
# runs with and without a word boundary, several '@', domains without a top-level domain, e-mails that touch.
@pytest.mark.parametrize("alphabet", ["ab.@", "ab.-_%+@ é", "aZ.@@-"])
def test_emails_are_found_exactly_where_the_plain_pattern_finds_them(alphabet: str) -> None:
    rng = random.Random(alphabet)
    for _ in range(5000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 20)))
        assert scrub(text)[0] == _REFERENCE_EMAIL.sub(PLACEHOLDERS["email"], text), text


def _repeat(unit: str, size: int = 1_000_000) -> str:
    return (unit * (size // len(unit) + 1))[:size]


@pytest.mark.parametrize(
    "bait",
    [
        _repeat("a."),  # local part that never reaches an '@'
        _repeat("a-"),
        "x@" + _repeat("a."),  # a domain without a top-level domain
        "a@" + _repeat("a-"),
        _repeat("a@"),
        _repeat("%+"),
        _repeat("1 "),  # one run of digit groups, far too long for a phone number
        _repeat("1."),
        _repeat("+1"),
        _repeat("(12) "),
        _repeat(" "),
    ],
    ids=["a.", "a-", "x@a.", "a@a-", "a@", "%+", "1 ", "1.", "+1", "(12) ", "spaces"],
)
def test_a_megabyte_of_bait_without_pii_comes_back_unchanged(bait: str) -> None:
    assert scrub(bait) == (bait, {})


def test_a_megabyte_of_emails_and_phone_shaped_numbers_is_scrubbed_item_by_item() -> None:
    rng = random.Random(8)
    numbers = [" ".join(f"{rng.randrange(100):02d}" for _ in range(4)) for _ in range(45_000)]
    emails = 60_000
    text = "; ".join(numbers) + "; " + " ".join(["a@b.cd"] * emails)
    scrubbed, found = scrub(text)
    items = scrubbed.split("; ")
    assert items[-1] == " ".join(["[EMAIL]"] * emails)
    assert found["email"] == emails
    assert all(item in ("[PHONE]", number) for item, number in zip(items, numbers, strict=False))
    assert found["phone"] == items.count("[PHONE]") > 0
    assert len(text) > 1_000_000
