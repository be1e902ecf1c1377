"""Every topic streamtune uses, declared once with its settings and value schema.

No other module spells a topic name: they take a ``TopicSpec`` and resolve its name through
``topic_name`` so that a configured prefix applies everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Generic, TypeVar

from pydantic import BaseModel

from streamtune.contracts import (
    AdapterUpdate,
    Answer,
    AnswerDelta,
    Query,
    RefreshRequest,
    RefreshResult,
    TrainingExample,
    decode,
    encode,
)
from streamtune.settings import TopicSettings

__all__ = [
    "ADAPTER_UPDATES",
    "ALL_TOPICS",
    "ANSWERS",
    "ANSWER_DELTAS",
    "DOMAIN_EVENTS",
    "DOMAIN_EVENTS_DLQ",
    "QUERIES",
    "REFRESH_REQUESTS",
    "REFRESH_RESULTS",
    "TRAINING_EXAMPLES",
    "TopicSpec",
    "topic_name",
]

_KEEP_FOREVER = {"retention.ms": "-1", "retention.bytes": "-1"}
M = TypeVar("M", bound=BaseModel)


@dataclass(frozen=True)
class TopicSpec(Generic[M]):
    name: str
    key: str
    value: type[M] | None
    """Value model; None for raw topics: domain events (a tagged union, ``contracts.decode_event``) and dead
    letters (the original bytes)."""
    scaled: bool = True
    """Scaled topics get ``topics.partitions`` partitions; the others get one (total order)."""
    config: dict[str, str] = field(default_factory=dict)

    def partitions(self, settings: TopicSettings) -> int:
        return settings.partitions if self.scaled else 1

    def encode(self, message: M) -> bytes:
        """The value bytes of ``message``, which must be this topic's model."""
        if self.value is None or not isinstance(message, self.value):
            raise TypeError(f"{self.name} carries {self.value and self.value.__name__}, not {type(message).__name__}")
        return encode(message)

    def decode(self, raw: bytes | None, *, max_bytes: int | None = None) -> M:
        """This topic's model from value bytes, or ContractError with the precise reason."""
        if self.value is None:
            raise TypeError(f"{self.name} carries raw bytes; it has no value model")
        return decode(raw or b"", self.value, max_bytes=max_bytes)


# Replay rebuilds adapters from recorded offsets, so the inputs to training are never deleted.
DOMAIN_EVENTS: TopicSpec[BaseModel] = TopicSpec(
    "domain-events", "<tenant>:<doc_id> for documents, else event_id", None, config=_KEEP_FOREVER
)
DOMAIN_EVENTS_DLQ: TopicSpec[BaseModel] = TopicSpec(
    "domain-events.dlq", "the original key", None, scaled=False, config=_KEEP_FOREVER
)
TRAINING_EXAMPLES = TopicSpec("training-examples", "example_id", TrainingExample, config=_KEEP_FOREVER)
QUERIES = TopicSpec("queries", "query_id", Query)
ANSWERS = TopicSpec("answers", "query_id", Answer)
# Deltas matter only while someone streams them: ten minutes (the answer of record is on `answers`).
ANSWER_DELTAS = TopicSpec("answer-deltas", "query_id", AnswerDelta, config={"retention.ms": "600000"})
ADAPTER_UPDATES = TopicSpec("adapter-updates", "tenant", AdapterUpdate, scaled=False, config=_KEEP_FOREVER)
# Work for the `train worker` group, keyed by tenant: a tenant's requests share a partition, so one worker owns it at
# a time. Compacted rather than expiring: a tenant's latest request is never lost however long the workers are
# away, and the earlier ones it supersedes may go (the version built for the latest covers their examples).
REFRESH_REQUESTS = TopicSpec("refresh-requests", "tenant", RefreshRequest, config={"cleanup.policy": "compact"})
# Read by the watcher while it waits for them (minutes) and by an operator asking why a tenant was not refreshed:
# a week. One partition: the watcher reads them in the order they were written.
REFRESH_RESULTS = TopicSpec(
    "refresh-results", "tenant", RefreshResult, scaled=False, config={"retention.ms": str(7 * 24 * 3600 * 1000)}
)

ALL_TOPICS = (
    DOMAIN_EVENTS,
    DOMAIN_EVENTS_DLQ,
    TRAINING_EXAMPLES,
    QUERIES,
    ANSWERS,
    ANSWER_DELTAS,
    ADAPTER_UPDATES,
    REFRESH_REQUESTS,
    REFRESH_RESULTS,
)


def topic_name(spec: TopicSpec[M], settings: TopicSettings) -> str:
    return f"{settings.prefix}{spec.name}"
