"""What the Flink job does with a batch of raw Kafka records, free of Flink so that it can be tested alone.

A batch becomes: index writes (per document, the last event wins, which gives the same final state as
applying every event in order, because an upsert replaces all chunks and a delete removes them),
training examples, and dead letters. Every record ends in exactly one of: indexed, deleted,
example, skipped (negative feedback), dead-lettered; ``BatchResult.counts`` reconciles them.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from retrieval.store import DocumentChunks
from streams.chunking import Chunker
from streams.pii import scrub
from streamtune.contracts import (
    ChatMessage,
    DocumentDeleted,
    DocumentUpserted,
    FeedbackRecorded,
    QaRecorded,
    TrainingExample,
    decode_event,
)
from streamtune.errors import ContractError
from streamtune.kafka import dlq_headers
from streamtune.settings import StreamsSettings

__all__ = [
    "BatchResult",
    "DeadLetter",
    "DocumentDelete",
    "DocumentWrite",
    "RawRecord",
    "documents",
    "example_id",
    "plan_batch",
]

_EXAMPLE_NAMESPACE = uuid.UUID("0f5b7d8e-54c6-4d0e-8a51-6b3f0c0f4a11")


@dataclass(frozen=True)
class RawRecord:
    key: bytes | None
    value: bytes | None
    topic: str
    partition: int
    offset: int


@dataclass(frozen=True)
class DeadLetter:
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]


@dataclass(frozen=True)
class DocumentWrite:
    event: DocumentUpserted
    title: str
    chunks: list[str]


@dataclass(frozen=True)
class DocumentDelete:
    tenant: str
    doc_id: str


@dataclass
class BatchResult:
    writes: list[DocumentWrite] = field(default_factory=list)
    deletes: list[DocumentDelete] = field(default_factory=list)
    examples: list[TrainingExample] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    counts: Counter[str] = field(default_factory=Counter)
    pii: Counter[str] = field(default_factory=Counter)


def example_id(tenant: str, event_id: str) -> str:
    """Derived from the event id, so a duplicated event yields the same example id."""
    return str(uuid.uuid5(_EXAMPLE_NAMESPACE, f"{tenant}\x1f{event_id}"))


def plan_batch(records: Sequence[RawRecord], settings: StreamsSettings, chunker: Chunker) -> BatchResult:
    result = BatchResult()
    last_for_doc: dict[tuple[str, str], DocumentWrite | DocumentDelete] = {}
    clean: Callable[[str], str] = _scrubber(result.pii) if settings.pii_scrubbing else (lambda text: text)
    for record in records:
        try:
            event = decode_event(record.value or b"", max_bytes=settings.max_event_bytes)
            if isinstance(event, DocumentUpserted):
                if len(event.data.text) > settings.max_text_chars:
                    raise ContractError(
                        f"data.text has {len(event.data.text)} characters, over streams.max_text_chars="
                        f"{settings.max_text_chars}",
                        error_class="TextTooLarge",
                    )
                chunks = [c.text for c in chunker.split(clean(event.data.text))]
                title = clean(event.data.title or "")
                last_for_doc[(event.tenant, event.data.doc_id)] = DocumentWrite(event, title, chunks)
                result.counts["indexed"] += 1
            elif isinstance(event, DocumentDeleted):
                last_for_doc[(event.tenant, event.data.doc_id)] = DocumentDelete(event.tenant, event.data.doc_id)
                result.counts["deleted"] += 1
            elif isinstance(event, QaRecorded):
                result.examples.append(
                    _example(event, clean(event.data.question), clean(event.data.answer), event.data.context_doc_ids)
                )
                result.counts["example"] += 1
            elif isinstance(event, FeedbackRecorded):
                if event.data.rating == 1:
                    answer = event.data.correction or event.data.answer
                    result.examples.append(_example(event, clean(event.data.question), clean(answer), None))
                    result.counts["example"] += 1
                else:
                    result.counts["skipped"] += 1
        except ContractError as exc:
            result.dead_letters.append(_dead_letter(record, exc.error_class, exc.reason))
            result.counts["dead_letter"] += 1
        except Exception as exc:
            result.dead_letters.append(_dead_letter(record, type(exc).__name__, str(exc)))
            result.counts["dead_letter"] += 1
    for action in last_for_doc.values():
        if isinstance(action, DocumentWrite):
            result.writes.append(action)
        else:
            result.deletes.append(action)
    return result


def documents(writes: Sequence[DocumentWrite], vectors: Sequence[Sequence[float]]) -> list[DocumentChunks]:
    """The index writes of a batch, given one vector per chunk in the order of ``writes``' chunks."""
    out, cursor = [], 0
    for write in writes:
        event = write.event
        out.append(
            DocumentChunks(
                tenant=event.tenant,
                doc_id=event.data.doc_id,
                title=write.title,
                chunks=write.chunks,
                vectors=vectors[cursor : cursor + len(write.chunks)],
                event_id=event.event_id,
                occurred_at=event.occurred_at.isoformat(),
                source=event.source,
                metadata=event.data.metadata,
            )
        )
        cursor += len(write.chunks)
    if cursor != len(vectors):
        raise ValueError(f"{len(vectors)} vectors for {cursor} chunks")
    return out


def _scrubber(counts: Counter[str]) -> Callable[[str], str]:
    def clean(text: str) -> str:
        scrubbed, found = scrub(text)
        counts.update(found)
        return scrubbed

    return clean


def _example(
    event: QaRecorded | FeedbackRecorded, question: str, answer: str, context: list[str] | None
) -> TrainingExample:
    return TrainingExample(
        example_id=example_id(event.tenant, event.event_id),
        tenant=event.tenant,
        messages=[ChatMessage(role="user", content=question), ChatMessage(role="assistant", content=answer)],
        source_event_id=event.event_id,
        created_at=event.occurred_at,
        context_doc_ids=context,
    )


def _dead_letter(record: RawRecord, error_class: str, message: str) -> DeadLetter:
    return DeadLetter(
        record.key, record.value, dlq_headers(error_class, message, record.topic, record.partition, record.offset)
    )
