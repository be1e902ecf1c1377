from __future__ import annotations

from streamtune.dlq import HEADERS, ORIGINAL_SIZE, DeadLetter


def letter(value: bytes, key: bytes | None = b"k") -> DeadLetter:
    return DeadLetter(key, value, "InvalidEvent", "data.doc_id: Field required", "domain-events", 2, 41)


def test_headers_are_the_contract_names_and_read_back() -> None:
    original = letter(b"{}")
    headers = original.headers()
    assert tuple(headers) == HEADERS
    assert headers["source.offset"] == b"41"
    again = DeadLetter.from_record(original.key, original.value, headers, offset=7)
    assert again == DeadLetter(**{**original.__dict__, "offset": 7})
    assert again.source == "domain-events[2]@41" and again.reason.startswith("InvalidEvent: ")


def test_a_letter_too_large_keeps_its_headers_a_truncated_value_and_its_size() -> None:
    big = letter(b"x" * 2_000_000, key=b"k" * 10)
    fitted = big.fitted(1_000_000)
    assert fitted.original_size == 2_000_000
    assert fitted.value == b"x" * len(fitted.value or b"") and 0 < len(fitted.value or b"") < 1_000_000
    headers = fitted.headers()
    record = len(fitted.key or b"") + len(fitted.value or b"") + sum(len(k) + len(v) for k, v in headers.items())
    assert record < 1_000_000
    assert headers[ORIGINAL_SIZE] == b"2000000" and headers["error.class"] == b"InvalidEvent"
    assert DeadLetter.from_record(fitted.key, fitted.value, headers, 0).original_size == 2_000_000


def test_a_small_letter_is_unchanged_and_long_messages_are_cut() -> None:
    small = letter(b"{}")
    assert small.fitted(1_000_000) is small
    assert ORIGINAL_SIZE not in small.headers()
    wordy = DeadLetter(None, b"", "InternalError", "m" * 10_000, "t", 0, 0)
    assert len(wordy.headers()["error.message"]) == 4000
