"""What the Flink job does with a batch of raw Kafka records, free of Flink so that it can be tested alone.

A batch becomes: index writes (per document, the last event wins, which gives the same final state as
applying every event in order, because an upsert replaces all chunks and a delete removes them),
training examples, and dead letters. Every record ends in exactly one of: indexed, deleted,
example, dead-lettered; ``BatchResult.counts`` reconciles them, also after
``reject`` has moved the documents Weaviate refused to the dead letters (``IndexRejected``).

No record can stop the job: an input the contract refuses is dead-lettered with its reason, and a bug of
ours on one record dead-letters that record as ``InternalError`` with the exception.

Once the batch's index writes are done, ``add_context`` gives each example the context it is meant to be
answered with, as the index holds it then (``TrainingExample.context``): for a ``qa.recorded`` event that
names documents, those documents' chunks that best match the question; otherwise (and for feedback) the
tenant's top-k chunks for the question, as ``serve`` would retrieve them. The lookup is handed in, so this
stays free of Weaviate too.

Feedback becomes one example each (``TrainingExample.kind``): a positive rating a demonstration of the answer
(or of its correction) labelled desirable; a negative rating with a correction a preference pair (chosen: the
correction, rejected: the served answer); a negative rating without one a rating labelled undesirable.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from retrieval.store import DocumentChunks, SearchHit
from streams.chunking import Chunker
from streams.pii import Scrubber
from streamtune.contracts import (
    ChatMessage,
    ContextPassage,
    DocumentDeleted,
    DocumentUpserted,
    FeedbackRecorded,
    QaRecorded,
    TrainingExample,
    decode_event,
)
from streamtune.dlq import DeadLetter
from streamtune.errors import ContractError
from streamtune.settings import StreamsSettings

__all__ = [
    "BatchResult",
    "ContextLookup",
    "ContextRequest",
    "DocumentDelete",
    "DocumentWrite",
    "RawRecord",
    "add_context",
    "documents",
    "example_id",
    "internal_error",
    "passages",
    "plan_batch",
    "reject",
    "scrubber_for",
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
class DocumentWrite:
    event: DocumentUpserted
    title: str
    chunks: list[str]
    record: RawRecord
    metadata: dict[str, Any] = field(default_factory=dict)
    """Scrubbed like the text."""


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


@dataclass(frozen=True)
class ContextRequest:
    """What one example's context is looked up by."""

    tenant: str
    question: str
    """The example's question, scrubbed (as the index's text is)."""
    doc_ids: tuple[str, ...]
    """The documents a ``qa.recorded`` event names; empty: retrieve from all the tenant's documents."""


ContextLookup = Callable[[Sequence[ContextRequest]], Sequence[Sequence[ContextPassage]]]
"""Per request, in order, the passages in rank order (at most ``retrieval.top_k``). Batched, so that the
job embeds the batch's questions together."""


def example_id(tenant: str, event_id: str) -> str:
    """Derived from the event id, so a duplicated event yields the same example id."""
    return str(uuid.uuid5(_EXAMPLE_NAMESPACE, f"{tenant}\x1f{event_id}"))


def scrubber_for(settings: StreamsSettings) -> Scrubber:
    """The PII scrubber the settings describe (build it once per operator: it validates the regions)."""
    return Scrubber(settings.pii_phone_regions, max_phone_lookups=settings.pii_max_phone_lookups)


def plan_batch(
    records: Sequence[RawRecord], settings: StreamsSettings, chunker: Chunker, scrubber: Scrubber | None = None
) -> BatchResult:
    result = BatchResult()
    last_for_doc: dict[tuple[str, str], DocumentWrite | DocumentDelete] = {}
    clean: Callable[[str], str] = (
        _scrubber(scrubber or scrubber_for(settings), result.pii) if settings.pii_scrubbing else (lambda text: text)
    )
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
                metadata = _clean_values(event.data.metadata, clean)
                last_for_doc[(event.tenant, event.data.doc_id)] = DocumentWrite(event, title, chunks, record, metadata)
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
                result.examples.append(_feedback_example(event, clean))
                result.counts["example"] += 1
        except ContractError as exc:
            result.dead_letters.append(_dead_letter(record, exc.error_class, exc.reason, settings))
            result.counts["dead_letter"] += 1
        except Exception as exc:  # a bug of ours: this record is dead-lettered, the job goes on
            result.dead_letters.append(_dead_letter(record, "InternalError", f"{type(exc).__name__}: {exc}", settings))
            result.counts["dead_letter"] += 1
    for action in last_for_doc.values():
        if isinstance(action, DocumentWrite):
            result.writes.append(action)
        else:
            result.deletes.append(action)
    return result


def add_context(result: BatchResult, lookup: ContextLookup) -> None:
    """Store in each of the batch's examples the context it is meant to be answered with (``lookup``'s
    passages; an empty list when nothing was found, which renders like an empty retrieval)."""
    if not result.examples:
        return
    requests = [ContextRequest(e.tenant, _question(e), tuple(e.context_doc_ids or ())) for e in result.examples]
    found = lookup(requests)
    if len(found) != len(requests):
        raise ValueError(f"context lookup returned {len(found)} results for {len(requests)} examples")
    result.examples = [
        example.model_copy(update={"context": list(context)})
        for example, context in zip(result.examples, found, strict=True)
    ]


def passages(hits: Sequence[SearchHit]) -> list[ContextPassage]:
    """Search hits as they are stored with an example: in rank order, with their cosine similarity (which
    ``retrieval.min_similarity`` filters on when the example is rendered, as serve filters its hits), without the
    fused score (a rank within one result list)."""
    return [
        ContextPassage(doc_id=h.doc_id, chunk_id=h.chunk_id, title=h.title, text=h.text, similarity=h.similarity)
        for h in hits
    ]


def _question(example: TrainingExample) -> str:
    return next(m.content for m in reversed(example.messages) if m.role == "user")


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
                metadata=write.metadata,
            )
        )
        cursor += len(write.chunks)
    if cursor != len(vectors):
        raise ValueError(f"{len(vectors)} vectors for {cursor} chunks")
    return out


def reject(result: BatchResult, refused: Mapping[tuple[str, str], str], settings: StreamsSettings) -> None:
    """Move the writes Weaviate refused (``(tenant, doc_id) → message``) to the dead letters as IndexRejected."""
    if not refused:
        return
    kept = []
    for write in result.writes:
        message = refused.get((write.event.tenant, write.event.data.doc_id))
        if message is None:
            kept.append(write)
            continue
        result.dead_letters.append(_dead_letter(write.record, "IndexRejected", message, settings))
        result.counts["indexed"] -= 1
        result.counts["dead_letter"] += 1
    result.writes = kept


def internal_error(records: Sequence[RawRecord], exc: BaseException, settings: StreamsSettings) -> BatchResult:
    """Every one of ``records`` dead-lettered as InternalError (a record that fails even on its own)."""
    result = BatchResult()
    for record in records:
        result.dead_letters.append(_dead_letter(record, "InternalError", f"{type(exc).__name__}: {exc}", settings))
        result.counts["dead_letter"] += 1
    return result


def _scrubber(scrubber: Scrubber, counts: Counter[str]) -> Callable[[str], str]:
    def clean(text: str) -> str:
        scrubbed, found = scrubber.scrub(text)
        counts.update(found)
        return scrubbed

    return clean


def _clean_values(value: Any, clean: Callable[[str], str]) -> Any:
    """``value`` (JSON: dicts, lists, scalars) with every string value scrubbed; keys are left as they are."""
    if isinstance(value, str):
        return clean(value)
    if isinstance(value, dict):
        return {k: _clean_values(v, clean) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean_values(v, clean) for v in value]
    return value


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


def _feedback_example(event: FeedbackRecorded, clean: Callable[[str], str]) -> TrainingExample:
    data = event.data
    question, served = clean(data.question), clean(data.answer)
    correction = clean(data.correction) if data.correction else None
    if data.rating == 1:
        return _example(event, question, correction or served, None).model_copy(update={"label": True})
    if correction:
        example = _example(event, question, correction, None)
        return example.model_copy(update={"kind": "preference", "rejected": served})
    return _example(event, question, served, None).model_copy(update={"kind": "rating", "label": False})


def _dead_letter(record: RawRecord, error_class: str, message: str, settings: StreamsSettings) -> DeadLetter:
    letter = DeadLetter(record.key, record.value, error_class, message, record.topic, record.partition, record.offset)
    return letter.fitted(settings.dlq_max_bytes)
