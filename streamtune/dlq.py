"""Reading the dead-letter topic back: `streamtune dlq show`."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from streamtune.kafka import committed_end_offsets, read_range
from streamtune.settings import Settings
from streamtune.topics import DOMAIN_EVENTS_DLQ, topic_name

__all__ = ["DeadLetterRecord", "read_dead_letters"]


@dataclass(frozen=True)
class DeadLetterRecord:
    offset: int
    key: bytes | None
    value: bytes | None
    headers: dict[str, str]

    @property
    def reason(self) -> str:
        return f"{self.headers.get('error.class', '?')}: {self.headers.get('error.message', '?')}"


def read_dead_letters(settings: Settings) -> Iterator[DeadLetterRecord]:
    """Every committed dead letter, partition by partition, up to the end offsets at the time of the call."""
    topic = topic_name(DOMAIN_EVENTS_DLQ, settings.topics)
    ends = committed_end_offsets(settings.kafka, topic)
    for message in read_range(settings.kafka, topic, {p: (0, end) for p, end in ends.items()}):
        raw_headers: list[tuple[str, bytes | None]] = message.headers() or []  # type: ignore[assignment]
        headers = {k: (v or b"").decode("utf-8", "replace") for k, v in raw_headers}
        yield DeadLetterRecord(message.offset() or 0, message.key(), message.value(), headers)
