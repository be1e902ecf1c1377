from __future__ import annotations

import json

import pytest

from streamtune.contracts import (
    Answer,
    AnswerError,
    Citation,
    ContextPassage,
    DocumentDeleted,
    DocumentUpserted,
    FeedbackRecorded,
    QaRecorded,
    Query,
    TrainingExample,
    decode,
    decode_event,
    encode,
)
from streamtune.errors import ContractError


def event(**overrides: object) -> dict[str, object]:
    base: dict[str, object] = {
        "schema_version": 1,
        "event_id": "e-1",
        "type": "document.upserted",
        "tenant": "acme",
        "occurred_at": "2026-11-21T10:00:00Z",
        "source": "cms",
        "data": {"doc_id": "refund-policy", "title": "Refund policy", "text": "30 days.", "metadata": {}},
    }
    base.update(overrides)
    return base


def raw(value: object) -> bytes:
    return json.dumps(value).encode()


def test_each_event_type_decodes_to_its_model() -> None:
    assert isinstance(decode_event(raw(event())), DocumentUpserted)
    deleted = decode_event(raw(event(type="document.deleted", data={"doc_id": "refund-policy"})))
    assert isinstance(deleted, DocumentDeleted) and deleted.key == "acme:refund-policy"
    qa = decode_event(raw(event(type="qa.recorded", data={"question": "q?", "answer": "a."})))
    assert isinstance(qa, QaRecorded) and qa.key == "e-1"
    fb = decode_event(
        raw(event(type="feedback.recorded", data={"query_id": "q-1", "rating": -1, "question": "q", "answer": "a"}))
    )
    assert isinstance(fb, FeedbackRecorded) and fb.data.rating == -1


def test_tenant_defaults_and_unknown_fields_are_ignored() -> None:
    value = event(extra_field="from a newer producer")
    del value["tenant"]
    decoded = decode_event(raw(value))
    assert decoded.tenant == "default"
    assert decoded.key == "default:refund-policy"


@pytest.mark.parametrize(
    ("payload", "error_class", "fragment"),
    [
        (b"\xff\xfe not utf-8", "NotUtf8", "not UTF-8"),
        (b"{not json", "MalformedJson", "not JSON"),
        (b"[1, 2]", "InvalidMessage", "JSON list"),
        (raw(event(schema_version=2)), "UnsupportedSchemaVersion", "schema_version is 2"),
        (raw(event(type="order.placed")), "UnknownEventType", "'order.placed'"),
        (raw(event(data={"title": "t", "text": "x"})), "InvalidEvent", "data.doc_id"),
        (raw(event(event_id=123)), "InvalidEvent", "event_id"),
        (raw(event(occurred_at="yesterday")), "InvalidEvent", "occurred_at"),
        (raw(event(tenant="bad tenant!")), "InvalidEvent", "tenant"),
        (
            raw(event(type="feedback.recorded", data={"query_id": "q", "rating": "1", "question": "q", "answer": "a"})),
            "InvalidEvent",
            "data.rating",
        ),
        (raw(event(data={"doc_id": "d", "text": ""})), "InvalidEvent", "data.text"),
    ],
)
def test_bad_events_are_rejected_with_a_precise_reason(payload: bytes, error_class: str, fragment: str) -> None:
    with pytest.raises(ContractError) as info:
        decode_event(payload)
    assert info.value.error_class == error_class
    assert fragment in info.value.reason


def test_oversized_payload_is_rejected_before_parsing() -> None:
    payload = raw(event(data={"doc_id": "d", "text": "x" * 2000}))
    with pytest.raises(ContractError) as info:
        decode_event(payload, max_bytes=1000)
    assert info.value.error_class == "PayloadTooLarge"
    assert str(len(payload)) in info.value.reason


def test_messages_round_trip_through_bytes() -> None:
    example = TrainingExample(
        example_id="x-1",
        tenant="acme",
        messages=[{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],  # type: ignore[list-item]
        source_event_id="e-1",
    )
    assert decode(encode(example), TrainingExample) == example
    answer = Answer(
        query_id="q-1",
        answer="30 days.",
        citations=[Citation(doc_id="refund-policy", chunk_id="refund-policy#0", score=0.8)],
        error=None,
    )
    assert decode(encode(answer), Answer) == answer
    assert json.loads(encode(answer))["schema_version"] == 1
    failed = Answer(query_id="q-2", error=AnswerError(code="invalid_query", message="question: missing"))
    assert json.loads(encode(failed))["error"]["code"] == "invalid_query"


def test_a_training_example_carries_its_context_and_older_ones_still_decode() -> None:
    old = {
        "schema_version": 1,
        "example_id": "x-1",
        "tenant": "acme",
        "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
        "source_event_id": "e-1",
        "created_at": "2026-11-21T10:00:05Z",
        "context_doc_ids": ["refund-policy"],
    }
    assert decode(raw(old), TrainingExample).context is None  # written before examples carried context
    passage = {"doc_id": "refund-policy", "chunk_id": "refund-policy#0", "title": "Refund policy", "text": "30 days."}
    newer = {**old, "context": [{**passage, "score": 0.8, "from": "a newer producer"}]}  # unknown keys ignored
    example = decode(raw(newer), TrainingExample)
    assert example.context == [ContextPassage(**passage)]
    assert decode(encode(example), TrainingExample) == example  # stored, so replay reads the same bytes
    assert json.loads(encode(example))["context"] == [{**passage, "similarity": None}]  # from before similarity
    scored = decode(raw({**old, "context": [{**passage, "similarity": 0.61}]}), TrainingExample)
    assert scored.context[0].similarity == 0.61  # type: ignore[index]
    assert decode(raw({**old, "context": []}), TrainingExample).context == []
    assert decode(raw({**old, "context": None}), TrainingExample).context is None
    untitled = decode(raw({**old, "context": [{"doc_id": "d", "chunk_id": "d#0", "text": "t"}]}), TrainingExample)
    assert untitled.context[0].title == ""  # type: ignore[index]
    with pytest.raises(ContractError, match=r"context\.0\.text"):
        decode(raw({**old, "context": [{"doc_id": "d", "chunk_id": "d#0"}]}), TrainingExample)
    with pytest.raises(ContractError, match="context"):
        decode(raw({**old, "context": [passage] * 101}), TrainingExample)


def test_query_validation() -> None:
    q = decode(raw({"schema_version": 1, "query_id": "q-1", "question": "hi?"}), Query)
    assert (q.tenant, q.top_k, q.adapter) == ("default", None, None)
    with pytest.raises(ContractError, match="top_k"):
        decode(raw({"schema_version": 1, "query_id": "q-1", "question": "hi?", "top_k": 0}), Query)
    with pytest.raises(ContractError, match="question"):
        decode(raw({"schema_version": 1, "query_id": "q-1"}), Query)
