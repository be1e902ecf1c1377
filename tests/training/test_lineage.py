"""Exact lineage: what a version trains on is decided by recorded offsets and recorded decisions, never by the
index as it is at replay time nor by the order records happen to arrive in.

On the real Kafka (and, for the deleted / not-yet-indexed distinction, the real Weaviate behind
``streamtune train``'s ``index_check``), with the tiny model: quality is not the subject here.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import pytest

from streamtune.contracts import ChatMessage, TrainingExample
from streamtune.harness import publish_examples, training_example
from streamtune.kafka import committed_end_offsets, create_topics, delete_topics, producer, read_range
from streamtune.manifest import Manifest
from streamtune.settings import Settings, load_settings
from streamtune.topics import DOMAIN_EVENTS, TRAINING_EXAMPLES, topic_name
from training.data import read_examples, read_recorded
from training.refresh import RefreshOutcome, refresh, replay


@pytest.fixture
def lineage_settings(trainer_settings: Settings) -> Settings:
    # A replay sample larger than any history here: every earlier example the split does not hold out is replayed.
    training = trainer_settings.training.model_copy(update={"replay_sample": 100})
    return trainer_settings.model_copy(update={"training": training})


def published(outcome: RefreshOutcome) -> Manifest:
    assert outcome.manifest is not None, (outcome.status, outcome.reason)
    return outcome.manifest


def promoted(outcome: RefreshOutcome) -> Manifest:
    # a child version needs its parent current: the window and the replay pool continue from it
    assert outcome.status == "promoted", outcome.reason
    return published(outcome)


@pytest.mark.integration
@pytest.mark.slow
def test_an_example_whose_document_was_deleted_since_is_left_out_of_the_replay_sample(
    lineage_settings: Settings,
) -> None:
    settings = lineage_settings
    # seed 42, 20 %: none of acme-ex-0..7 is held out by the split's hash, so all 8 are in the replay pool
    publish_examples(settings, "acme", 0, 8, relies_on={2: ["doc-a"], 5: ["doc-b"]})
    deleted: set[str] = set()
    asked: list[set[str]] = []

    def missing_docs(tenant: str, doc_ids: set[str]) -> set[str]:
        asked.append(set(doc_ids))
        return doc_ids & deleted

    first = promoted(refresh(settings, "acme", missing_docs=missing_docs, say=lambda _: None))
    assert first.data.new_examples == 8 and first.data.excluded_example_ids == []

    deleted.add("doc-a")  # erased after the first version trained on acme-ex-2
    publish_examples(settings, "acme", 8, 6)
    second = published(refresh(settings, "acme", missing_docs=missing_docs, say=lambda _: None))
    assert second.parent is not None and second.parent.version == first.version
    assert second.data.replay == 7, "the erased document's example came back into training through replay"
    assert second.data.replay_excluded_example_ids == ["acme-ex-2"]  # the decision is recorded

    # Replay uses the recorded decision: the index is not asked again, even though doc-a is back now.
    deleted.clear()
    calls = len(asked)
    outcome = replay(settings, "acme", second.version, say=lambda _: None)
    assert outcome.identical, (outcome.recorded_sha256, outcome.replayed_sha256)
    assert len(asked) == calls


def _index(settings: Settings, tenant: str, *doc_ids: str) -> None:
    """Write one chunk per document into the test's own collection, as the streaming job would."""
    from retrieval import connect
    from retrieval.store import ChunkStore, DocumentChunks

    with connect(settings.weaviate) as client:
        store = ChunkStore(client, settings)
        store.ensure_collection(4)
        refused = store.upsert(
            [
                DocumentChunks(
                    tenant, d, d, [f"text of {d}"], [[0.1, 0.2, 0.3, 0.4]], f"ev-{d}", "2026-01-01T00:00:00Z"
                )
                for d in doc_ids
            ]
        )
        assert not refused, refused


def _drop_collection(settings: Settings) -> None:
    from retrieval import connect
    from retrieval.store import ChunkStore

    with connect(settings.weaviate) as client:
        ChunkStore(client, settings).drop()


def _document_event(settings: Settings, tenant: str, doc_id: str, kind: str) -> None:
    data: dict[str, str] = {"doc_id": doc_id} if kind == "document.deleted" else {"doc_id": doc_id, "text": "x"}
    event = {
        "schema_version": 1,
        "event_id": f"{kind}-{doc_id}-{uuid.uuid4().hex[:6]}",
        "tenant": tenant,
        "occurred_at": datetime.now(UTC).isoformat(),
        "type": kind,
        "data": data,
    }
    client = producer(settings.kafka)
    client.produce(
        topic_name(DOMAIN_EVENTS, settings.topics), key=f"{tenant}:{doc_id}".encode(), value=json.dumps(event).encode()
    )
    assert client.flush(15) == 0


@pytest.mark.integration
@pytest.mark.slow
def test_an_example_whose_document_is_not_indexed_yet_is_deferred_not_lost(lineage_settings: Settings) -> None:
    from streamtune.cli.train import index_check

    settings = lineage_settings
    try:
        _index(settings, "acme", "doc-kept", "doc-gone")
        _document_event(settings, "acme", "doc-gone", "document.upserted")
        _document_event(settings, "acme", "doc-gone", "document.deleted")  # the job saw the deletion...
        from retrieval import connect
        from retrieval.store import ChunkStore

        with connect(settings.weaviate) as client:  # ...and removed the chunks
            ChunkStore(client, settings).delete([("acme", "doc-gone")])
        _document_event(settings, "acme", "doc-later", "document.upserted")  # on the topic, not indexed yet
        publish_examples(settings, "acme", 0, 8, relies_on={1: ["doc-gone"], 3: ["doc-later"], 6: ["doc-kept"]})

        first = promoted(refresh(settings, "acme", missing_docs=index_check(settings), say=lambda _: None))
        assert first.data.excluded_example_ids == ["acme-ex-1"], "a not-yet-indexed document counted as deleted"
        assert first.data.new_examples == 6
        assert [e.example_id for e in read_recorded(settings, "acme", first.data).examples].count("acme-ex-3") == 0
        assert len(first.data.deferred) == 1

        _index(settings, "acme", "doc-later")  # the job caught up
        publish_examples(settings, "acme", 8, 6)
        second = published(refresh(settings, "acme", missing_docs=index_check(settings), say=lambda _: None))
        trained = [e.example_id for e in read_recorded(settings, "acme", second.data).examples]
        assert "acme-ex-3" in trained, "the deferred example was never trained on"
        assert second.data.new_examples == 7 and second.data.carried == first.data.deferred
        assert second.data.deferred == []
        outcome = replay(settings, "acme", second.version, say=lambda _: None)
        assert outcome.identical, (outcome.recorded_sha256, outcome.replayed_sha256)
    finally:
        _drop_collection(settings)


@pytest.mark.integration
@pytest.mark.slow
def test_examples_are_read_in_partition_offset_order_whatever_the_poll_order(stack: Settings) -> None:
    # A fetch returns at most ~1 KB per partition, so the consumer hands records of the three partitions over
    # interleaved: poll order is not (partition, offset) order.
    settings = load_settings(
        config_files=[],
        topics={"prefix": f"lin-{uuid.uuid4().hex[:8]}.", "partitions": 3},
        kafka={"client_config": {"max.partition.fetch.bytes": "1024"}},
    )
    create_topics(settings.kafka, settings.topics, [TRAINING_EXAMPLES])
    topic = topic_name(TRAINING_EXAMPLES, settings.topics)
    try:
        client = producer(settings.kafka)
        for i in range(12):
            for p in (2, 0, 1):
                ex = training_example("acme", i).model_copy(update={"example_id": f"acme-p{p}-{i:02d}"})
                client.produce(topic, key=ex.example_id.encode(), value=TRAINING_EXAMPLES.encode(ex), partition=p)
                assert client.flush(15) == 0  # one record per batch: fetches stop between records
        ends = committed_end_offsets(settings.kafka, topic)
        ranges = {p: (0, end) for p, end in ends.items()}
        polled = [(m.partition(), m.offset()) for m in read_range(settings.kafka, topic, ranges)]
        assert polled != sorted(polled), "precondition: the poll order must differ for this test to mean anything"

        ids = [e.example_id for e in read_examples(settings, "acme", ranges).examples]
        assert ids == [f"acme-p{p}-{i:02d}" for p in range(3) for i in range(12)]
    finally:
        delete_topics(settings.kafka, settings.topics, [TRAINING_EXAMPLES])


@pytest.mark.integration
@pytest.mark.slow
def test_a_child_version_replays_byte_identically(lineage_settings: Settings) -> None:
    settings = lineage_settings.model_copy(
        update={"training": lineage_settings.training.model_copy(update={"replay_sample": 4})}
    )
    publish_examples(settings, "acme", 0, 8)
    first = promoted(refresh(settings, "acme", say=lambda _: None))
    publish_examples(settings, "acme", 8, 8)
    publish_examples(settings, "other", 0, 4)  # another tenant's records in both ranges
    # one the trainer cuts at training.max_length (512 tokens), one it cannot use (no answer at the end)
    long = training_example("acme", 16).model_copy(
        update={
            "messages": [
                ChatMessage(role="user", content="q?"),
                ChatMessage(role="assistant", content="30 days. " * 400),
            ]
        }
    )
    unanswered = training_example("acme", 18).model_copy(
        update={"messages": [ChatMessage(role="assistant", content="hi"), ChatMessage(role="user", content="q?")]}
    )
    client = producer(settings.kafka)
    for ex in (long, unanswered):
        client.produce(
            topic_name(TRAINING_EXAMPLES, settings.topics),
            key=ex.example_id.encode(),
            value=TRAINING_EXAMPLES.encode(ex),
        )
    assert client.flush(15) == 0
    lines: list[str] = []
    second = published(refresh(settings, "acme", say=lines.append))
    assert second.parent is not None and second.parent.version == first.version
    assert second.data.replay == 4  # parent adapter + a replay sample: the case replay must get right
    assert (second.data.truncated_example_ids, second.data.dropped_example_ids) == (["acme-ex-16"], ["acme-ex-18"])
    assert any("1 dropped" in line and "1 truncated to 512 tokens" in line for line in lines), lines
    outcome = replay(settings, "acme", second.version, say=lambda _: None)
    assert outcome.identical, (outcome.recorded_sha256, outcome.replayed_sha256)


def test_the_recorded_replay_pool_draws_what_a_full_read_would_across_versions_and_deletions(
    settings: Settings,
) -> None:
    """Eight versions of 30 new examples each, documents deleted along the way: the replay sample drawn from
    the parent's recorded candidates is the one a read of the whole history draws, version after version
    (falling back to the full read only when deletions took too many candidates)."""
    import random

    from training.data import NewExamples, Window, plan_split

    settings = settings.model_copy(
        update={"training": settings.training.model_copy(update={"replay_sample": 4, "min_eval_examples": 2})}
    )
    rng = random.Random(7)
    history: list[TrainingExample] = []
    at: dict[str, tuple[int, int]] = {}
    by_position: dict[tuple[int, int], TrainingExample] = {}
    deleted: set[str] = set()

    def gone(batch: Sequence[TrainingExample]) -> set[str]:
        return {e.example_id for e in batch if set(e.context_doc_ids or []) & deleted}

    pool: list[TrainingExample] | None = None
    bound: int | None = None
    held: list[TrainingExample] = []
    from_pool = fallbacks = 0
    for version in range(8):
        new = [training_example("acme", version * 30 + i, [f"doc-{rng.randrange(40)}"]) for i in range(30)]
        for i, e in enumerate(new):
            at[e.example_id] = (i % 3, version * 10 + i // 3)
            by_position[at[e.example_id]] = e
        fresh = NewExamples(new, [], 0, 0, at={e.example_id: at[e.example_id] for e in new})
        span = Window({}, {})
        full = plan_split(span, fresh, history, settings, at=at, gone=gone)
        data = full
        if pool is not None:
            data = plan_split(
                span, fresh, pool, settings, at=at, gone=gone, bound=bound, ranked=True, earlier_held=held
            )
            if bound is not None and len(data.replay) < settings.training.replay_sample:
                data, fallbacks = full, fallbacks + 1
            else:
                from_pool += 1
        assert [e.example_id for e in data.replay] == [e.example_id for e in full.replay], version
        assert data.replay_at == [at[e.example_id] for e in data.replay]
        assert data.pool is not None
        pool = [by_position[p] for p in data.pool.replay]
        bound, held = data.pool.bound, [by_position[p] for p in data.pool.held]
        history += new
        deleted |= {f"doc-{rng.randrange(40)}" for _ in range(3)}  # erased after this version
    assert from_pool >= 4  # the recorded candidates did the work, not the full read


def test_examples_the_trainer_drops_or_truncates_are_named(tiny_model: Path, settings: Settings) -> None:
    from transformers import AutoTokenizer

    from streamtune.contracts import ContextPassage
    from streamtune.prompt import PromptFormat
    from training.trainer import fates

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    short = training_example("acme", 0)
    unanswered = training_example("acme", 1).model_copy(
        update={"messages": [ChatMessage(role="assistant", content="hi"), ChatMessage(role="user", content="q?")]}
    )
    long_answer = training_example("acme", 2).model_copy(
        update={
            "messages": [
                ChatMessage(role="user", content="q?"),
                ChatMessage(role="assistant", content="30 days. " * 80),
            ]
        }
    )
    passage = ContextPassage(doc_id="policy", chunk_id="policy#0", title="Policy", text="Refunds in thirty days. " * 40)
    long_context = training_example("acme", 3).model_copy(update={"context": [passage]})

    rows, dropped, truncated = fates([short, unanswered, long_answer], None, tokenizer, 64)
    assert (len(rows), dropped, truncated) == (2, ["acme-ex-1"], ["acme-ex-2"])

    form = PromptFormat.of(settings)
    rows, dropped, truncated = fates([short, long_context], form, tokenizer, 400)  # the spotlight note takes room
    assert (len(rows), dropped, truncated) == (2, [], ["acme-ex-3"])  # its context was shortened to fit
    assert fates([short, long_context], form, tokenizer, 4096)[1:] == ([], [])


def test_a_new_example_ranked_past_the_recorded_bound_does_not_jump_unlisted_earlier_ones() -> None:
    from training.data import next_pool, replay_sample

    everything = replay_sample([training_example("acme", i) for i in range(20)], 20, 42)  # in rank order (seed 42)
    earlier, new = everything[:10], everything[10:]  # every new one ranks above every earlier one
    listed, bound = next_pool(earlier, None, 5, 42)
    assert listed == earlier[:5] and bound is not None

    # the four lowest are deleted since: the one listed survivor and no new one, for earlier[5:] rank lower
    assert next_pool([earlier[4], *new], bound, 5, 42) == ([earlier[4]], bound)
    # with every earlier candidate listed (no bound), the new ones are the next lowest
    assert next_pool([earlier[4], *new], None, 5, 42) == ([earlier[4], *new[:4]], _rank_of(new[3]))


def _rank_of(e: TrainingExample) -> int:
    from training.data import _rank

    return _rank(43, e.example_id)
