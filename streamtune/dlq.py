"""Dead letters: the one type, its headers as the wire contract names them, and the reader.

A dead letter keeps the original key and value bytes of a record that could not be processed, with
headers ``error.class``, ``error.message``, ``source.topic``, ``source.partition``, ``source.offset``.
A letter too large for the Kafka producer keeps every header, a truncated value and ``original.size``
(the value's size in bytes before truncation), so that it can always be written: a dead letter that
cannot be delivered would stop the job that writes it.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from typing import Any

from streamtune.kafka import committed_end_offsets, read_range
from streamtune.settings import Settings
from streamtune.topics import DOMAIN_EVENTS_DLQ, topic_name

__all__ = ["HEADERS", "ORIGINAL_SIZE", "DeadLetter", "read_dead_letters"]

HEADERS = ("error.class", "error.message", "source.topic", "source.partition", "source.offset")
ORIGINAL_SIZE = "original.size"
_MAX_MESSAGE_CHARS = 4000
# Room left for the record's framing and headers when fitting a letter under the producer's limit.
_RECORD_OVERHEAD = 1024


@dataclass(frozen=True)
class DeadLetter:
    key: bytes | None
    value: bytes | None
    error_class: str
    error_message: str
    source_topic: str
    source_partition: int
    source_offset: int
    original_size: int | None = None
    """Set when ``value`` was truncated to fit the producer's size limit."""
    offset: int | None = None
    """The letter's own offset on the dead-letter topic, when it was read back."""

    @property
    def reason(self) -> str:
        return f"{self.error_class}: {self.error_message}"

    @property
    def source(self) -> str:
        return f"{self.source_topic}[{self.source_partition}]@{self.source_offset}"

    def headers(self) -> dict[str, bytes]:
        values = (
            self.error_class,
            self.error_message[:_MAX_MESSAGE_CHARS],
            self.source_topic,
            str(self.source_partition),
            str(self.source_offset),
        )
        headers = {name: value.encode("utf-8") for name, value in zip(HEADERS, values, strict=True)}
        if self.original_size is not None:
            headers[ORIGINAL_SIZE] = str(self.original_size).encode()
        return headers

    def fitted(self, max_bytes: int) -> DeadLetter:
        """This letter, its key and value truncated so the whole record stays under ``max_bytes``."""
        headers = sum(len(k) + len(v) for k, v in self.headers().items()) + len(ORIGINAL_SIZE) + 20
        room = max_bytes - _RECORD_OVERHEAD - headers
        key, value = self.key or b"", self.value or b""
        if len(key) + len(value) <= room:
            return self
        short_key = key[: max(room // 4, 0)]
        kept = max(room - len(short_key), 0)
        return replace(
            self, key=short_key if self.key is not None else None, value=value[:kept], original_size=len(value)
        )

    @classmethod
    def from_record(cls, key: bytes | None, value: bytes | None, headers: Mapping[str, Any], offset: int) -> DeadLetter:
        def text(name: str) -> str:
            raw = headers.get(name)
            return raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw or "")

        def number(name: str) -> int:
            try:
                return int(text(name))
            except ValueError:
                return -1

        size = text(ORIGINAL_SIZE)
        return cls(
            key=key,
            value=value,
            error_class=text("error.class") or "?",
            error_message=text("error.message"),
            source_topic=text("source.topic"),
            source_partition=number("source.partition"),
            source_offset=number("source.offset"),
            original_size=int(size) if size.isdigit() else None,
            offset=offset,
        )


def read_dead_letters(settings: Settings) -> Iterator[DeadLetter]:
    """Every committed dead letter, partition by partition, up to the end offsets at the time of the call."""
    topic = topic_name(DOMAIN_EVENTS_DLQ, settings.topics)
    ends = committed_end_offsets(settings.kafka, topic)
    for message in read_range(settings.kafka, topic, {p: (0, end) for p, end in ends.items()}):
        raw_headers: list[tuple[str, bytes | None]] = message.headers() or []  # type: ignore[assignment]
        yield DeadLetter.from_record(message.key(), message.value(), dict(raw_headers), message.offset() or 0)
