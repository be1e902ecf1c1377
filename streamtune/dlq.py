"""Reading the dead-letter topic back: `streamtune dlq show`."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

from streamtune.kafka import client_config
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


def read_dead_letters(settings: Settings, *, timeout_s: float = 10.0) -> Iterator[DeadLetterRecord]:
    """Every committed dead letter, oldest first, up to the end offsets at the time of the call.

    Reads without a consumer group commit, so it never moves anyone's offsets.
    """
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    topic = topic_name(DOMAIN_EVENTS_DLQ, settings.topics)
    consumer = Consumer(
        client_config(
            settings.kafka,
            **{
                "group.id": f"dlq-reader-{uuid.uuid4().hex[:8]}",
                "enable.auto.commit": False,
                "isolation.level": "read_committed",
            },
        )
    )
    try:
        metadata = consumer.list_topics(topic, timeout=settings.kafka.request_timeout_s)
        partitions = sorted(metadata.topics[topic].partitions)
        ends = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout_s)[1] for p in partitions}
        assigned = [TopicPartition(topic, p, OFFSET_BEGINNING) for p, end in ends.items() if end > 0]
        consumer.assign(assigned)
        deadline = time.monotonic() + timeout_s
        while assigned and time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is None:
                # Transaction markers take offsets too: done once every position has reached its end.
                positions = consumer.position([TopicPartition(topic, tp.partition) for tp in assigned])
                if all(tp.offset >= ends[tp.partition] for tp in positions):
                    break
                continue
            if message.error() is not None:
                continue
            raw_headers: list[tuple[str, bytes | None]] = message.headers() or []  # type: ignore[assignment]
            headers = {k: (v or b"").decode("utf-8", "replace") for k, v in raw_headers}
            yield DeadLetterRecord(message.offset() or 0, message.key(), message.value(), headers)
    finally:
        consumer.close()
