"""Every topic streamtune uses, declared once with its settings and value schema.

No other module spells a topic name: they take a ``TopicSpec`` and resolve its name through
``topic_name`` so that a configured prefix applies everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pydantic import BaseModel

from streamtune.contracts import AdapterUpdate, Answer, Query, TrainingExample
from streamtune.settings import TopicSettings

__all__ = [
    "ADAPTER_UPDATES",
    "ALL_TOPICS",
    "ANSWERS",
    "DOMAIN_EVENTS",
    "DOMAIN_EVENTS_DLQ",
    "QUERIES",
    "TRAINING_EXAMPLES",
    "TopicSpec",
    "topic_name",
]

_KEEP_FOREVER = {"retention.ms": "-1", "retention.bytes": "-1"}


@dataclass(frozen=True)
class TopicSpec:
    name: str
    key: str
    value: type[BaseModel] | None
    """Value model; None for the dead-letter topic, which keeps the original bytes."""
    scaled: bool = True
    """Scaled topics get ``topics.partitions`` partitions; the others get one (total order)."""
    config: dict[str, str] = field(default_factory=dict)

    def partitions(self, settings: TopicSettings) -> int:
        return settings.partitions if self.scaled else 1


# Replay rebuilds adapters from recorded offsets, so the inputs to training are never deleted.
DOMAIN_EVENTS = TopicSpec("domain-events", "<tenant>:<doc_id> for documents, else event_id", None, config=_KEEP_FOREVER)
DOMAIN_EVENTS_DLQ = TopicSpec("domain-events.dlq", "the original key", None, scaled=False, config=_KEEP_FOREVER)
TRAINING_EXAMPLES = TopicSpec("training-examples", "example_id", TrainingExample, config=_KEEP_FOREVER)
QUERIES = TopicSpec("queries", "query_id", Query)
ANSWERS = TopicSpec("answers", "query_id", Answer)
ADAPTER_UPDATES = TopicSpec("adapter-updates", "tenant", AdapterUpdate, scaled=False, config=_KEEP_FOREVER)

ALL_TOPICS = (DOMAIN_EVENTS, DOMAIN_EVENTS_DLQ, TRAINING_EXAMPLES, QUERIES, ANSWERS, ADAPTER_UPDATES)


def topic_name(spec: TopicSpec, settings: TopicSettings) -> str:
    return f"{settings.prefix}{spec.name}"
