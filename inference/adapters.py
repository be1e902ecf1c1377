"""What ``adapter-updates`` announced, and the reader that follows the topic between requests.

``AdapterBook`` keeps every announced version's location and each tenant's newest; ``UpdateReader`` reads
the compacted history from the beginning at start-up and then polls without blocking.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass

from streamtune.contracts import AdapterUpdate
from streamtune.errors import ContractError
from streamtune.kafka import consumer
from streamtune.settings import Settings
from streamtune.topics import ADAPTER_UPDATES, topic_name

__all__ = ["AdapterBook", "UpdateReader"]

log = logging.getLogger(__name__)


@dataclass
class AdapterBook:
    """Every announced version's location, and each tenant's newest."""

    base_model: str
    latest: dict[str, str]
    uris: dict[tuple[str, str], str]
    ignored: list[str]

    @classmethod
    def empty(cls, base_model: str) -> AdapterBook:
        return cls(base_model, {}, {}, [])

    def record(self, update: AdapterUpdate) -> bool:
        """Take an announcement; False (and noted in ``ignored``) when its base model is not ours."""
        if update.base_model != self.base_model:
            self.ignored.append(f"{update.tenant} {update.version}: base {update.base_model} != {self.base_model}")
            return False
        self.uris[(update.tenant, update.version)] = update.uri
        self.latest[update.tenant] = update.version
        return True


class UpdateReader:
    """A reader of ``adapter-updates`` from the beginning, polled without blocking between requests."""

    def __init__(self, settings: Settings) -> None:
        from confluent_kafka import OFFSET_BEGINNING, TopicPartition

        topic = topic_name(ADAPTER_UPDATES, settings.topics)
        self.consumer = consumer(settings.kafka)
        partitions = self.consumer.list_topics(topic, timeout=settings.kafka.request_timeout_s).topics[topic].partitions
        self.consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])

    def poll(self, timeout_s: float = 0.0) -> list[AdapterUpdate]:
        updates = []
        while (message := self.consumer.poll(timeout_s)) is not None:
            if message.error() is None:
                try:
                    updates.append(ADAPTER_UPDATES.decode(message.value()))
                except ContractError as exc:  # a foreign, invalid announcement is not ours
                    log.warning("adapter-updates@%s: ignored an invalid announcement: %s", message.offset(), exc)
            timeout_s = 0.0
        return updates

    def close(self) -> None:
        with contextlib.suppress(RuntimeError):
            self.consumer.close()
