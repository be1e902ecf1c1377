from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import pytest

from retrieval.store import SearchHit
from streams.chunking import Chunker
from streams.processing import (
    ContextRequest,
    DocumentDelete,
    RawRecord,
    add_context,
    documents,
    example_id,
    passages,
    plan_batch,
)
from streamtune.contracts import ContextPassage, TrainingExample
from streamtune.settings import StreamsSettings


def event(i: int, type_: str, data: dict[str, Any], tenant: str = "acme") -> bytes:
    return json.dumps(
        {
            "schema_version": 1,
            "event_id": f"e-{i}",
            "type": type_,
            "tenant": tenant,
            "occurred_at": "2026-11-21T10:00:00Z",
            "data": data,
        }
    ).encode()


def records(*values: bytes | None) -> list[RawRecord]:
    return [RawRecord(f"k{i}".encode(), value, "domain-events", 0, i) for i, value in enumerate(values)]


@pytest.fixture
def chunker(tokenizer: Any) -> Chunker:
    return Chunker(tokenizer, 32, 8)


def test_every_record_is_accounted_for(chunker: Chunker) -> None:
    batch = records(
        event(1, "document.upserted", {"doc_id": "a", "text": "Refunds within 30 days."}),
        b"{not json",
        event(2, "qa.recorded", {"question": "Refund window?", "answer": "30 days."}),
        b"\xff",
        event(3, "feedback.recorded", {"query_id": "q", "rating": -1, "question": "q", "answer": "a"}),
        event(
            4,
            "feedback.recorded",
            {"query_id": "q", "rating": 1, "question": "Q?", "answer": "old", "correction": "new"},
        ),
        event(5, "document.deleted", {"doc_id": "b"}),
        None,
        event(6, "order.placed", {}),
    )
    result = plan_batch(batch, StreamsSettings(), chunker)
    assert result.counts == {"indexed": 1, "example": 3, "deleted": 1, "dead_letter": 4}
    assert sum(result.counts.values()) == len(batch)
    assert [w.event.data.doc_id for w in result.writes] == ["a"]
    assert result.deletes == [DocumentDelete("acme", "b")]
    assert [e.messages[1].content for e in result.examples] == ["30 days.", "a", "new"]
    assert [(e.kind, e.label) for e in result.examples] == [(None, None), ("rating", False), (None, True)]
    assert result.examples[0].example_id == example_id("acme", "e-2")


def test_feedback_becomes_a_demonstration_a_preference_pair_or_a_rating(chunker: Chunker) -> None:
    batch = records(
        event(1, "feedback.recorded", {"query_id": "q1", "rating": 1, "question": "Q?", "answer": "good"}),
        event(2, "feedback.recorded", {"query_id": "q2", "rating": -1, "question": "Q?", "answer": "bad"}),
        event(
            3,
            "feedback.recorded",
            {"query_id": "q3", "rating": -1, "question": "Mail a@b.org?", "answer": "wrong", "correction": "right"},
        ),
        event(
            4,
            "feedback.recorded",
            {"query_id": "q4", "rating": -1, "question": "Q?", "answer": "a", "correction": "x" * 1_000_000},
        ),
    )
    result = plan_batch(batch, StreamsSettings(), chunker)
    assert result.counts == {"example": 3, "dead_letter": 1}  # a 1 MB correction: over the event size limit
    assert result.dead_letters[0].error_class == "PayloadTooLarge"
    shaped = [(e.kind, e.label, e.messages[-1].content, e.rejected) for e in result.examples]
    assert shaped == [
        (None, True, "good", None),
        ("rating", False, "bad", None),
        ("preference", None, "right", "wrong"),
    ]
    assert result.examples[2].messages[0].content == "Mail [EMAIL]?"  # scrubbed like every example


def test_dead_letters_carry_the_contract_headers(chunker: Chunker) -> None:
    result = plan_batch(records(b"ok", b"{bad"), StreamsSettings(), chunker)
    letter = result.dead_letters[1]
    headers = letter.headers()
    assert (letter.key, letter.value) == (b"k1", b"{bad")
    assert headers["error.class"] == b"MalformedJson"
    assert b"not JSON" in headers["error.message"]
    assert (headers["source.topic"], headers["source.partition"], headers["source.offset"]) == (
        b"domain-events",
        b"0",
        b"1",
    )


def test_oversized_events_and_texts_are_dead_lettered(chunker: Chunker) -> None:
    settings = StreamsSettings(max_event_bytes=400, max_text_chars=50)
    big_event = event(1, "document.upserted", {"doc_id": "a", "text": "x " * 400})
    long_text = event(2, "document.upserted", {"doc_id": "b", "text": "y" * 60})
    result = plan_batch(records(big_event, long_text), settings, chunker)
    classes = [d.error_class for d in result.dead_letters]
    assert classes == ["PayloadTooLarge", "TextTooLarge"]
    assert not result.writes


def test_last_event_per_document_wins_within_a_batch(chunker: Chunker) -> None:
    result = plan_batch(
        records(
            event(1, "document.upserted", {"doc_id": "a", "text": "first"}),
            event(2, "document.deleted", {"doc_id": "a"}),
            event(3, "document.upserted", {"doc_id": "b", "text": "old"}),
            event(4, "document.upserted", {"doc_id": "b", "text": "new"}),
            event(5, "document.upserted", {"doc_id": "a", "text": "same id, other tenant"}, tenant="other"),
        ),
        StreamsSettings(),
        chunker,
    )
    assert result.deletes == [DocumentDelete("acme", "a")]
    assert [(w.event.tenant, w.event.data.doc_id, w.chunks) for w in result.writes] == [
        ("acme", "b", ["new"]),
        ("other", "a", ["same id, other tenant"]),
    ]


def test_pii_is_scrubbed_from_documents_and_examples_unless_disabled(chunker: Chunker) -> None:
    batch = records(
        event(1, "document.upserted", {"doc_id": "a", "title": "Mail x@y.com", "text": "Card 4111 1111 1111 1111."}),
        event(2, "qa.recorded", {"question": "Is +1 415-555-0132 yours?", "answer": "Yes, or mail a@b.org."}),
    )
    result = plan_batch(batch, StreamsSettings(), chunker)
    assert result.writes[0].title == "Mail [EMAIL]"
    assert result.writes[0].chunks == ["Card [CARD]."]
    assert [m.content for m in result.examples[0].messages] == ["Is [PHONE] yours?", "Yes, or mail [EMAIL]."]
    assert result.pii == {"email": 2, "card": 1, "phone": 1}
    raw = plan_batch(batch, StreamsSettings(pii_scrubbing=False), chunker)
    assert raw.writes[0].chunks == ["Card 4111 1111 1111 1111."]


def test_duplicate_events_give_the_same_example_id(chunker: Chunker) -> None:
    qa = event(7, "qa.recorded", {"question": "q?", "answer": "a."})
    result = plan_batch(records(qa, qa), StreamsSettings(), chunker)
    assert len({e.example_id for e in result.examples}) == 1


def test_documents_get_their_own_slice_of_the_batch_vectors(chunker: Chunker) -> None:
    long_text = " ".join(f"word{i}" for i in range(80))
    result = plan_batch(
        records(
            event(1, "document.upserted", {"doc_id": "long", "text": long_text}),
            event(2, "document.upserted", {"doc_id": "short", "text": "one chunk", "metadata": {"lang": "en"}}),
        ),
        StreamsSettings(),
        chunker,
    )
    count = sum(len(w.chunks) for w in result.writes)
    vectors = [[float(i)] for i in range(count)]
    docs = documents(result.writes, vectors)
    assert [(d.doc_id, len(d.chunks), len(d.vectors)) for d in docs] == [
        ("long", count - 1, count - 1),
        ("short", 1, 1),
    ]
    assert docs[1].vectors == [[float(count - 1)]] and docs[1].metadata == {"lang": "en"}
    with pytest.raises(ValueError, match="vectors for"):
        documents(result.writes, vectors[:-1])


# -- the context an example is answered with ----------------------------------------------------------


class FakeIndex:
    """A lookup over a tenant's chunks: the named documents' chunks, else the top-k by shared words (the
    ranking is not the subject: which request asks for what, and where the answer lands, is)."""

    def __init__(self, chunks: dict[str, list[SearchHit]], top_k: int = 2) -> None:
        self.chunks = chunks
        self.top_k = top_k
        self.requests: list[ContextRequest] = []

    def __call__(self, requests: Sequence[ContextRequest]) -> list[list[ContextPassage]]:
        self.requests.extend(requests)
        found = []
        for request in requests:
            hits = [
                h for h in self.chunks.get(request.tenant, []) if not request.doc_ids or h.doc_id in request.doc_ids
            ]
            words = set(request.question.lower().split())
            hits.sort(key=lambda h: -len(words & set(h.text.lower().split())))
            found.append(passages(hits[: self.top_k]))
        return found


INDEX = {
    "acme": [
        SearchHit("refunds", "refunds#0", "Refunds", "refunds within 30 days", 0.0),
        SearchHit("refunds", "refunds#1", "Refunds", "store credit for used bikes", 0.0),
        SearchHit("shipping", "shipping#0", "Shipping", "orders ship from lisbon", 0.0),
    ],
}


def test_each_example_gets_the_context_of_the_documents_it_names_or_of_its_question(chunker: Chunker) -> None:
    batch = records(
        event(1, "qa.recorded", {"question": "Used bikes?", "answer": "Store credit.", "context_doc_ids": ["refunds"]}),
        event(2, "qa.recorded", {"question": "where do orders ship from?", "answer": "Lisbon."}),
        event(3, "feedback.recorded", {"query_id": "q", "rating": 1, "question": "refunds within?", "answer": "30."}),
        event(4, "feedback.recorded", {"query_id": "q", "rating": -1, "question": "x?", "answer": "y"}),
        event(5, "qa.recorded", {"question": "Anything?", "answer": "No.", "context_doc_ids": ["never-indexed"]}),
        event(6, "qa.recorded", {"question": "Hours?", "answer": "9 to 5."}, tenant="nobody"),
    )
    result = plan_batch(batch, StreamsSettings(), chunker)
    index = FakeIndex(INDEX)
    add_context(result, index)

    assert [(r.tenant, r.question, r.doc_ids) for r in index.requests] == [
        ("acme", "Used bikes?", ("refunds",)),
        ("acme", "where do orders ship from?", ()),
        ("acme", "refunds within?", ()),
        ("acme", "x?", ()),
        ("acme", "Anything?", ("never-indexed",)),
        ("nobody", "Hours?", ()),
    ]
    context = {e.source_event_id: [p.chunk_id for p in e.context or []] for e in result.examples}
    assert context == {
        "e-1": ["refunds#1", "refunds#0"],  # only the named document's chunks, the best match first
        "e-2": ["shipping#0", "refunds#0"],  # the top-k for the question
        "e-3": ["refunds#0", "refunds#1"],  # positive feedback: the top-k for its question
        "e-4": ["refunds#0", "refunds#1"],  # negative feedback too: the context serve would have retrieved
        "e-5": [],  # a named document with no chunks: an empty context, rendered like an empty retrieval
        "e-6": [],
    }
    first = result.examples[0].context[0]  # type: ignore[index]
    assert (first.doc_id, first.title, first.text) == ("refunds", "Refunds", "store credit for used bikes")
    assert result.counts == {"example": 6}  # outcomes unchanged: every record still counted once
    # what goes on the topic: the context stored in the example, decoded back the same
    assert TrainingExample.model_validate_json(result.examples[0].model_dump_json()) == result.examples[0]


def test_the_context_is_looked_up_with_the_scrubbed_question(chunker: Chunker) -> None:
    batch = records(event(1, "qa.recorded", {"question": "Mail a@b.org about refunds?", "answer": "Yes."}))
    result = plan_batch(batch, StreamsSettings(), chunker)
    index = FakeIndex(INDEX)
    add_context(result, index)
    assert index.requests[0].question == "Mail [EMAIL] about refunds?"


def test_a_batch_without_examples_asks_nothing_and_a_short_answer_is_an_error(chunker: Chunker) -> None:
    def never(requests: Sequence[ContextRequest]) -> list[list[ContextPassage]]:
        raise AssertionError("asked without examples")

    add_context(plan_batch(records(event(1, "document.deleted", {"doc_id": "a"})), StreamsSettings(), chunker), never)
    result = plan_batch(
        records(event(2, "qa.recorded", {"question": "q?", "answer": "a."})), StreamsSettings(), chunker
    )
    with pytest.raises(ValueError, match="0 results for 1 examples"):
        add_context(result, lambda requests: [])
