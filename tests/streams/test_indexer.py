"""The ingest job's batch work without PyFlink: ``BatchIndexer`` against the real Weaviate of the local stack.

Each test has its own collection (uuid-named) and the packaged embedding model. Weaviate's faults are injected
by ``Faulty``, which stands in front of the indexer's real store and fails the calls a test names before they
reach Weaviate; every write that is made lands in the real Weaviate, and the tests count what is there.
The same paths run inside the job in ``tests/streams/test_ingest_job.py`` (outage, crash, poison inputs).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from weaviate.exceptions import WeaviateConnectionError

from retrieval import connect
from retrieval.store import ChunkStore
from streams.indexer import BatchIndexer, Stopped
from streams.processing import BatchResult, RawRecord, example_id
from streamtune.contracts import encode
from streamtune.errors import RetryExhausted
from streamtune.harness import (
    document_deleted,
    document_upserted,
    feedback_recorded,
    isolated_env,
    qa_recorded,
    settings_for_env,
    wait_for,
)
from streamtune.settings import Settings

pytestmark = [pytest.mark.integration]

TOPIC = "domain-events"
LONG_POLICY = " ".join(f"Clause {i}: refunds are issued to the original payment method." for i in range(12))


class Faulty:
    """The indexer's real store, except that a call ``fail(name, args)`` answers with an exception raises it
    instead of reaching Weaviate. Counts every call by name."""

    def __init__(self, store: ChunkStore, fail: Callable[[str, tuple[Any, ...]], BaseException | None]) -> None:
        self.store = store
        self.fail = fail
        self.calls: Counter[str] = Counter()

    def __getattr__(self, name: str) -> Any:
        real = getattr(self.store, name)
        if not callable(real):
            return real

        def call(*args: Any, **kwargs: Any) -> Any:
            self.calls[name] += 1
            exc = self.fail(name, args)
            if exc is not None:
                raise exc
            return real(*args, **kwargs)

        return call


def outage(calls: int, *names: str) -> Callable[[str, tuple[Any, ...]], BaseException | None]:
    """Weaviate down for the first ``calls`` calls of each of ``names`` (``calls=-1``: for good)."""
    seen: Counter[str] = Counter()

    def fail(name: str, args: tuple[Any, ...]) -> BaseException | None:
        if name not in names:
            return None
        seen[name] += 1
        if calls < 0 or seen[name] <= calls:
            return WeaviateConnectionError("Connection refused: Weaviate is down")
        return None

    return fail


def records(*events: Any, start: int = 0) -> list[RawRecord]:
    """Kafka records of ``events`` (contract events, or raw bytes as they are) on partition 0, from ``start``."""
    out = []
    for offset, event in enumerate(events, start):
        value = event if isinstance(event, bytes) else encode(event)
        out.append(RawRecord(f"key-{offset}".encode(), value, TOPIC, 0, offset))
    return out


def counts(results: Sequence[BatchResult]) -> Counter[str]:
    total: Counter[str] = Counter()
    for result in results:
        total.update(result.counts)
    return +total


@pytest.fixture
def make_settings(stack: Settings, tmp_path: Path) -> Iterator[Callable[..., Settings]]:
    """Settings of a deployment of its own (its collection is dropped afterwards), with a fast retry policy."""
    made: list[Settings] = []

    def make(**env: str) -> Settings:
        overrides = {
            "STREAMTUNE__STREAMS__CHUNK_TOKENS": "24",
            "STREAMTUNE__STREAMS__CHUNK_OVERLAP": "4",
            "STREAMTUNE__WEAVIATE__RETRY_INITIAL_S": "0.01",
            "STREAMTUNE__WEAVIATE__RETRY_MAX_S": "0.04",
            "STREAMTUNE__EMBEDDING__TORCH_THREADS": "1",
            **env,
        }
        settings = settings_for_env(isolated_env(tmp_path / f"d{len(made)}", "indexer", **overrides))
        made.append(settings)
        return settings

    yield make
    for settings in made:
        with connect(settings.weaviate) as client:  # a fresh client: a test may have closed the indexer's
            ChunkStore(client, settings).drop()


@pytest.fixture
def open_indexer(make_settings: Callable[..., Settings]) -> Iterator[Callable[..., BatchIndexer]]:
    opened: list[BatchIndexer] = []

    def open_(**env: str) -> BatchIndexer:
        indexer = BatchIndexer(make_settings(**env))
        opened.append(indexer)
        return indexer

    yield open_
    for indexer in opened:
        indexer.close()


def test_a_batch_of_upserts_and_deletes_is_written_and_every_record_counted(
    open_indexer: Callable[..., BatchIndexer],
) -> None:
    indexer = open_indexer()
    store = indexer.store
    first = indexer.index(
        records(
            document_upserted("e-1", "refund-policy", LONG_POLICY, tenant="acme", title="Refund policy"),
            document_upserted("e-2", "shipping", "Orders ship within two business days from Lisbon.", tenant="acme"),
            document_upserted("e-3", "shipping", "Beta tenant text about shipping.", tenant="beta"),
            b"{not json",
        )
    )
    assert len(first) == 1  # the whole batch in one result
    assert counts(first) == {"indexed": 3, "dead_letter": 1}
    assert [d.error_class for d in first[0].dead_letters] == ["MalformedJson"]
    assert store.count("acme", "refund-policy") > 2  # a long document becomes several overlapping chunks
    assert store.count("acme", "shipping") == 1 and store.count("beta", "shipping") == 1

    second = indexer.index(
        records(
            document_upserted("e-4", "refund-policy", "Refunds: 14 days, store credit only.", tenant="acme"),
            document_deleted("e-5", "shipping", tenant="acme"),
            start=4,
        )
    )
    assert counts(second) == {"indexed": 1, "deleted": 1}
    assert store.count("acme", "refund-policy") == 1  # the shorter version left no stale chunk
    assert store.count("acme", "shipping") == 0
    assert store.count("beta", "shipping") == 1  # the other tenant's document of the same id is untouched
    assert indexer.take_retried_ms() == 0


def test_examples_get_their_context_from_the_index_as_their_batch_left_it(
    open_indexer: Callable[..., BatchIndexer],
) -> None:
    indexer = open_indexer()
    (result,) = indexer.index(
        records(
            document_upserted("e-1", "refund-policy", LONG_POLICY, tenant="acme", title="Refund policy"),
            document_upserted("e-2", "shipping", "Orders ship within two business days from Lisbon.", tenant="acme"),
            qa_recorded("q-1", "How are refunds paid?", "To the card.", tenant="acme", context_doc_ids=["shipping"]),
            qa_recorded("q-2", "Where do orders ship from?", "Lisbon.", tenant="acme"),
            feedback_recorded("f-1", "Where do orders ship from?", "Porto", rating=-1, tenant="acme"),
            qa_recorded("q-3", "Where do orders ship from?", "Nobody knows.", tenant="beta"),
        )
    )
    assert counts([result]) == {"indexed": 2, "example": 4}
    context = {e.example_id: e.context for e in result.examples}
    # the named document only, though the other one matches the question better
    named = context[example_id("acme", "q-1")]
    assert named and {p.doc_id for p in named} == {"shipping"}
    # no document named: the tenant's top-k, best first, found in the batch that wrote them
    for event_id in ("q-2", "f-1"):
        passages = context[example_id("acme", event_id)]
        assert passages and passages[0].chunk_id == "shipping#0", event_id
        assert len(passages) <= indexer.settings.retrieval.top_k
    assert context[example_id("beta", "q-3")] == []  # another tenant's documents are never context


@pytest.mark.fault
def test_a_weaviate_outage_is_waited_out_under_the_retry_policy_and_loses_nothing(
    open_indexer: Callable[..., BatchIndexer], caplog: pytest.LogCaptureFixture
) -> None:
    indexer = open_indexer()
    faulty = Faulty(indexer.store, outage(3, "upsert", "delete", "search_documents"))
    indexer.store = faulty  # type: ignore[assignment]
    batch = records(
        *(document_upserted(f"d-{i}", f"doc-{i}", f"Outage document {i} about parcels.", tenant="t") for i in range(6)),
        document_deleted("d-del", "gone", tenant="t"),
        qa_recorded("q-1", "Which document is about parcels?", "Any.", tenant="t", context_doc_ids=["doc-1"]),
    )
    with caplog.at_level(logging.WARNING, logger="streams.indexer"):
        results = indexer.index(batch)
    assert len(results) == 1 and counts(results) == {"indexed": 6, "deleted": 1, "example": 1}
    assert results[0].dead_letters == []  # an outage is nobody's fault
    assert faulty.calls == {"delete": 4, "upsert": 4, "search_documents": 4}  # 3 refused, then through
    for i in range(6):
        assert indexer.store.count("t", f"doc-{i}") == 1
    assert {p.doc_id for p in results[0].examples[0].context} == {"doc-1"}
    # the waits are the policy's: 10, 20, 40 ms for each of the three calls, counted once
    backoff = indexer.settings.weaviate.backoff()
    assert indexer.take_retried_ms() == 3 * sum(int(backoff.delay(n) * 1000) for n in (1, 2, 3))
    assert indexer.take_retried_ms() == 0
    assert "unavailable for" in caplog.text and "is back after" in caplog.text
    assert "one by one" not in caplog.text  # never taken for the records' fault


@pytest.mark.fault
def test_an_outage_past_give_up_fails_naming_weaviate_and_dead_letters_nothing(
    open_indexer: Callable[..., BatchIndexer],
) -> None:
    indexer = open_indexer(STREAMTUNE__WEAVIATE__GIVE_UP_S="0.2")
    indexer.store = Faulty(indexer.store, outage(-1, "upsert"))  # type: ignore[assignment]
    with pytest.raises(RetryExhausted) as info:
        indexer.index(records(document_upserted("d-1", "doc-1", "Never written.", tenant="t")))
    assert f"Weaviate at http://127.0.0.1:{indexer.settings.weaviate.http_port}" in str(info.value)
    assert "weaviate.give_up_s" in str(info.value)


@pytest.mark.fault
def test_closing_the_indexer_stops_a_batch_waiting_for_weaviate(open_indexer: Callable[..., BatchIndexer]) -> None:
    indexer = open_indexer(STREAMTUNE__WEAVIATE__RETRY_MAX_S="0.5")
    faulty = Faulty(indexer.store, outage(-1, "upsert"))
    indexer.store = faulty  # type: ignore[assignment]
    with ThreadPoolExecutor(1) as thread:
        batch = thread.submit(indexer.index, records(document_upserted("d-1", "doc-1", "Waits.", tenant="t")))
        wait_for(lambda: faulty.calls["upsert"] >= 2, 60, "the batch waiting for Weaviate")
        indexer.close()
        with pytest.raises(Stopped):  # neither dead-lettered nor retried one by one: the checkpoint holds it
            batch.result(timeout=30)


@pytest.mark.fault
def test_a_batch_that_fails_on_one_record_is_indexed_record_by_record(
    open_indexer: Callable[..., BatchIndexer], caplog: pytest.LogCaptureFixture
) -> None:
    indexer = open_indexer()

    def bug(name: str, args: tuple[Any, ...]) -> BaseException | None:  # a bug of ours that one document meets
        if name == "upsert" and any(d.doc_id == "poison" for d in args[0]):
            return ValueError("cannot write the poison document")
        return None

    indexer.store = Faulty(indexer.store, bug)  # type: ignore[assignment]
    batch = records(
        document_upserted("d-1", "doc-1", "The first good document, about parcels.", tenant="t"),
        document_upserted("d-p", "poison", "The document our code fails on.", tenant="t"),
        document_upserted("d-2", "doc-2", "The second good document, about refunds.", tenant="t"),
        qa_recorded("q-1", "What is the second document about?", "Refunds.", tenant="t", context_doc_ids=["doc-2"]),
        b"\xff\xfe",
    )
    with caplog.at_level(logging.WARNING, logger="streams.indexer"):
        results = indexer.index(batch)
    assert len(results) == len(batch)  # one result per record, in order
    assert counts(results) == {"indexed": 2, "example": 1, "dead_letter": 2}
    letters = [letter for result in results for letter in result.dead_letters]
    assert [(letter.key, letter.error_class) for letter in letters] == [
        (b"key-1", "InternalError"),
        (b"key-4", "NotUtf8"),
    ]
    assert "ValueError: cannot write the poison document" in letters[0].error_message
    assert (letters[0].source_topic, letters[0].source_partition, letters[0].source_offset) == (TOPIC, 0, 1)
    assert indexer.store.count("t", "doc-1") == 1 and indexer.store.count("t", "doc-2") == 1
    assert indexer.store.count("t", "poison") == 0
    (example,) = results[3].examples
    assert {p.doc_id for p in example.context} == {"doc-2"}
    assert "indexing them one by one" in caplog.text and "dead-lettered" in caplog.text
