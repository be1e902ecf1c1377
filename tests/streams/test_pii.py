from __future__ import annotations

import pytest

from streams.pii import scrub


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
    ],
)
def test_ordinary_numbers_survive(text: str) -> None:
    assert scrub(text) == (text, {})
