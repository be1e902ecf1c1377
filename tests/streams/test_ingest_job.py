"""The ingest job on the real stack: Kafka → PyFlink → Weaviate + training-examples + DLQ.

The job runs as `streamtune streams run` does, in its own process, on uuid-named topics, group,
collection and checkpoint directory. A live (unbounded) source is used, as in production: batches
flush on size or time, so the tail of the stream is never left waiting.
"""

from __future__ import annotations

import json
import re
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from retrieval import connect
from retrieval.store import ChunkStore
from streams.processing import example_id
from streamtune.dlq import DeadLetter, read_dead_letters
from streamtune.harness import Deployment, free_port, raw_document, raw_event, settings_for_env, wait_for
from streamtune.kafka import producer
from streamtune.models import load_embedder
from streamtune.settings import Settings
from streamtune.topics import DOMAIN_EVENTS, TRAINING_EXAMPLES, topic_name

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def eventually(check: Callable[[], Any], timeout_s: float = 90.0, what: str = "") -> Any:
    return wait_for(check, timeout_s, what or str(check))


class Ingest(Deployment):
    """One isolated deployment of the job: its settings, its process, and helpers to drive and observe it."""

    def __init__(self, work: Path, **env: str) -> None:
        super().__init__(
            work,
            "ingest",
            {
                "STREAMTUNE__STREAMS__CHUNK_TOKENS": "24",
                "STREAMTUNE__STREAMS__CHUNK_OVERLAP": "4",
                "STREAMTUNE__FLINK__CHECKPOINT_INTERVAL_MS": "1000",
                "STREAMTUNE__EMBEDDING__BATCH_SIZE": "16",
                "STREAMTUNE__STREAMS__MAX_EVENT_BYTES": "65536",
                "STREAMTUNE__STREAMS__MAX_TEXT_CHARS": "20000",
                "STREAMTUNE__FLINK__LOCAL_REST_PORT": str(free_port()),
            },
            **env,
        )
        self.job = self.ingest_job()
        self.embedder = load_embedder(self.settings)
        self.client = connect(self.settings.weaviate)
        self.store = ChunkStore(self.client, self.settings)

    def start(self, **extra: str) -> None:
        self.env.update(extra)
        self.settings = settings_for_env(self.env)
        self.job.start(**self.env)

    def kill(self) -> None:
        self.job.kill()

    def stop(self) -> None:
        self.job.stop()

    def send(self, key: str | None, value: bytes | dict[str, Any]) -> None:
        self.produce(DOMAIN_EVENTS, key, value if isinstance(value, bytes) else json.dumps(value).encode())

    def chunks(self, tenant: str, doc_id: str | None = None) -> int:
        return self.store.count(tenant, doc_id)

    def search(self, tenant: str, text: str, k: int = 5) -> list[Any]:
        vector = self.embedder.encode([text], normalize_embeddings=True)[0].tolist()
        return self.store.search(tenant, text, vector, k)

    def examples(self) -> list[dict[str, Any]]:
        """Every committed training example, oldest first."""
        return [json.loads(value) for value in self.records(TRAINING_EXAMPLES)]

    def flink(self, path: str, port: int | None = None) -> Any:
        """The local MiniCluster's REST API (``flink.local_rest_port``)."""
        url = f"http://127.0.0.1:{port or self.settings.flink.local_rest_port}{path}"
        with urllib.request.urlopen(url, timeout=10) as response:
            return json.loads(response.read())

    def failures(self, port: int | None = None) -> tuple[list[str], list[Any]]:
        """The states of the MiniCluster's jobs, and every exception (failure, restart) any job had."""
        jobs = self.flink("/jobs", port)["jobs"]
        exceptions = [
            entry
            for job in jobs
            for entry in self.flink(f"/jobs/{job['id']}/exceptions", port)
            .get("exceptionHistory", {})
            .get("entries", [])
        ]
        return [job["status"] for job in jobs], exceptions

    def dead_letters(self) -> list[DeadLetter]:
        return list(read_dead_letters(self.settings))

    def close(self) -> None:
        self.client.close()  # the collection is dropped with a fresh client: a test may have closed this one
        super().close()


@pytest.fixture(scope="module")
def ingest(stack: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Ingest]:
    with Ingest(tmp_path_factory.mktemp("ingest")) as deployment:
        deployment.start()
        yield deployment


LONG_POLICY = " ".join(f"Clause {i}: refunds are issued to the original payment method." for i in range(12))


def test_documents_updates_deletes_examples_and_dead_letters(ingest: Ingest) -> None:
    ingest.send(*raw_document("e-1", "refund-policy", LONG_POLICY, title="Refund policy", tenant="acme"))
    ingest.send(*raw_document("e-2", "shipping", "Orders ship within two business days from Lisbon.", tenant="acme"))
    ingest.send(*raw_document("e-3", "shipping", "Secret: beta tenant text about shipping.", tenant="beta"))
    ingest.send("bad-1", b"{not json")  # malformed JSON
    ingest.send("bad-2", b"\xff\xfe\xfd")  # not UTF-8
    ingest.send("bad-3", raw_event("e-4", "order.placed", {"order": 1}, tenant="acme"))  # unknown type
    ingest.send(
        "bad-4", raw_event("e-5", "document.upserted", {"title": "no doc_id", "text": "x"}, tenant="acme")
    )  # missing field
    ingest.send(
        "bad-5",
        raw_event(
            "e-6", "feedback.recorded", {"query_id": "q", "rating": "1", "question": "q", "answer": "a"}, tenant="acme"
        ),
    )  # wrong type
    ingest.send("bad-6", raw_document("e-7", "huge", "z " * 50_000, tenant="acme")[1])  # oversized payload
    ingest.send(
        "bad-7", raw_document("e-7b", "long", "w " * 15_000, tenant="acme")[1]
    )  # text over streams.max_text_chars
    ingest.send(
        "e-8",
        raw_event(
            "e-8",
            "qa.recorded",
            {
                "question": "How long do refunds take?",
                "answer": "Five business days.",
                "context_doc_ids": ["refund-policy"],
            },
            tenant="acme",
        ),
    )
    ingest.send(
        "e-8",
        raw_event(
            "e-8",
            "qa.recorded",
            {"question": "How long do refunds take?", "answer": "Five business days."},
            tenant="acme",
        ),
    )  # duplicate event
    ingest.send(
        "e-9",
        raw_event(
            "e-9",
            "feedback.recorded",
            {"query_id": "q-1", "rating": 1, "question": "Ship from?", "answer": "Porto", "correction": "Lisbon."},
            tenant="acme",
        ),
    )
    ingest.send(
        "e-10",
        raw_event(
            "e-10",
            "feedback.recorded",
            {"query_id": "q-2", "rating": -1, "question": "x?", "answer": "y"},
            tenant="acme",
        ),
    )
    ingest.flush()

    long_chunks = eventually(lambda: ingest.chunks("acme", "refund-policy"), what="refund-policy indexed")
    assert long_chunks > 2  # a long document becomes several overlapping chunks
    eventually(lambda: ingest.chunks("acme", "shipping") == 1 and ingest.chunks("beta", "shipping") == 1)

    hits = ingest.search("acme", "where do orders ship from?")
    assert hits[0].doc_id == "shipping" and hits[0].chunk_id == "shipping#0"
    assert all("beta" not in h.text for h in ingest.search("acme", "secret beta tenant text", k=10))
    assert ingest.search("nobody", "anything") == []

    letters = eventually(
        lambda: len(list(read_dead_letters(ingest.settings))) >= 7 and list(read_dead_letters(ingest.settings)),
        what="six dead letters",
    )
    by_key = {(d.key or b"").decode(): d for d in letters}
    assert {k: by_key[k].error_class for k in by_key} == {
        "bad-1": "MalformedJson",
        "bad-2": "NotUtf8",
        "bad-3": "UnknownEventType",
        "bad-4": "InvalidEvent",
        "bad-5": "InvalidEvent",
        "bad-6": "PayloadTooLarge",
        "bad-7": "TextTooLarge",
    }
    assert "data.doc_id" in by_key["bad-4"].error_message
    assert "data.rating" in by_key["bad-5"].error_message
    assert by_key["bad-2"].value == b"\xff\xfe\xfd"  # the original bytes, untouched
    assert by_key["bad-1"].source_topic == topic_name(DOMAIN_EVENTS, ingest.settings.topics)
    assert by_key["bad-1"].source_partition >= 0 and by_key["bad-1"].source_offset >= 0

    examples = eventually(lambda: len(ingest.examples()) >= 4 and ingest.examples(), what="training examples")
    by_id: dict[str, list[dict[str, Any]]] = {}
    for example in examples:
        by_id.setdefault(example["example_id"], []).append(example)
    assert set(by_id) == {example_id("acme", e) for e in ("e-8", "e-9", "e-10")}
    assert (by_id[example_id("acme", "e-10")][0]["kind"], by_id[example_id("acme", "e-10")][0]["label"]) == (
        "rating",
        False,
    )  # negative feedback without a correction: a rating for the preference step, never a demonstration
    assert len(by_id[example_id("acme", "e-8")]) == 2  # the duplicated event: two records, one id
    assert by_id[example_id("acme", "e-9")][0]["messages"][1]["content"] == "Lisbon."  # the correction

    # Update: a shorter new version replaces every chunk, leaving no stale one.
    ingest.send(
        *raw_document(
            "e-11", "refund-policy", "Refunds: 14 days, store credit only.", title="Refund policy", tenant="acme"
        )
    )
    ingest.flush()
    eventually(lambda: ingest.chunks("acme", "refund-policy") == 1, what="update replaced chunks")
    assert "14 days" in ingest.search("acme", "refund policy", k=1)[0].text

    # Delete removes the document's chunks; the other tenant's same doc_id is untouched.
    ingest.send("acme:shipping", raw_event("e-12", "document.deleted", {"doc_id": "shipping"}, tenant="acme"))
    ingest.flush()
    eventually(lambda: ingest.chunks("acme", "shipping") == 0, what="delete")
    assert ingest.chunks("beta", "shipping") == 1


def test_pii_in_a_document_is_not_retrievable(ingest: Ingest) -> None:
    text = "Escalations go to Dana at dana.smith@acme.com, phone +44 20 7946 0958, card 4111 1111 1111 1111."
    ingest.send(*raw_document("e-20", "escalation", text, tenant="acme"))
    ingest.flush()
    eventually(lambda: ingest.chunks("acme", "escalation") == 1)
    for probe in ("dana.smith@acme.com", "+44 20 7946 0958", "4111 1111 1111 1111"):
        for hit in ingest.search("acme", probe, k=10):
            assert probe not in hit.text
    stored = ingest.search("acme", "escalations Dana", k=1)[0].text
    assert "[EMAIL]" in stored and "[PHONE]" in stored and "[CARD]" in stored


def test_a_replay_from_the_beginning_creates_no_duplicates(ingest: Ingest) -> None:
    eventually(lambda: ingest.chunks("acme", "escalation") == 1)  # earlier tests' data is in place
    before = {t: ingest.chunks(t) for t in ("acme", "beta")}
    examples_before = {e["example_id"] for e in ingest.examples()}
    ingest.stop()
    # A new consumer group and no checkpoint: the whole topic is processed a second time.
    ingest.start(STREAMTUNE__STREAMS__GROUP_ID=f"replay-{uuid.uuid4().hex[:8]}")
    marker = raw_document("e-30", "replay-marker", "The replay reached the end of the topic.", tenant="acme")
    ingest.send(*marker)
    ingest.flush()
    eventually(lambda: ingest.chunks("acme", "replay-marker") == 1, what="replay reached the end")
    assert {t: ingest.chunks(t) for t in ("acme", "beta")} == {"acme": before["acme"] + 1, "beta": before["beta"]}
    assert {e["example_id"] for e in ingest.examples()} == examples_before


@pytest.mark.fault
def test_a_crash_mid_stream_loses_and_duplicates_nothing(ingest: Ingest) -> None:
    total = 120
    for i in range(total // 2):
        ingest.send(*raw_document(f"c-{i}", f"crash-{i:03d}", f"Crash test document number {i}.", tenant="crash"))
        ingest.send(
            f"cq-{i}", raw_event(f"cq-{i}", "qa.recorded", {"question": f"q{i}?", "answer": f"a{i}."}, tenant="crash")
        )
    ingest.flush()
    eventually(lambda: ingest.chunks("crash") > 0, what="first half started")
    ingest.kill()  # mid-stream: some of the first half is processed, some not
    for i in range(total // 2, total):
        ingest.send(*raw_document(f"c-{i}", f"crash-{i:03d}", f"Crash test document number {i}.", tenant="crash"))
        ingest.send(
            f"cq-{i}", raw_event(f"cq-{i}", "qa.recorded", {"question": f"q{i}?", "answer": f"a{i}."}, tenant="crash")
        )
    ingest.flush()
    ingest.start()
    assert b"resuming from checkpoint" in ingest.job.log.read_bytes()
    eventually(lambda: ingest.chunks("crash") == total, timeout_s=180, what=f"{total} documents after restart")
    crash_examples = eventually(
        lambda: (
            [e for e in ingest.examples() if e["tenant"] == "crash"]
            if len([e for e in ingest.examples() if e["tenant"] == "crash"]) >= total
            else None
        ),
        timeout_s=120,
        what="examples after restart",
    )
    ids = [e["example_id"] for e in crash_examples]
    assert len(ids) == total and len(set(ids)) == total  # none lost, none duplicated


def _good_events(ingest: Ingest, tenant: str, start: int, count: int) -> None:
    for i in range(start, start + count):
        ingest.send(
            *raw_document(f"{tenant}-d-{i}", f"doc-{i:04d}", f"Document {i} of tenant {tenant}.", tenant=tenant)
        )
        qa = {"question": f"Question {i}?", "answer": f"Answer {i}."}
        ingest.send(f"{tenant}-q-{i}", raw_event(f"{tenant}-q-{i}", "qa.recorded", qa, tenant=tenant))
    ingest.flush()


def _examples_of(ingest: Ingest, tenant: str) -> list[str]:
    return [e["example_id"] for e in ingest.examples() if e["tenant"] == tenant]


@pytest.fixture
def fresh(stack: Settings, tmp_path: Path) -> Iterator[Callable[..., Ingest]]:
    made: list[Ingest] = []

    def make(**env: str) -> Ingest:
        deployment = Ingest(tmp_path / f"d{len(made)}", **env)
        made.append(deployment)
        return deployment

    yield make
    for deployment in made:
        deployment.close()


@pytest.mark.fault
def test_poison_inputs_are_dead_lettered_and_the_job_never_restarts(fresh: Callable[..., Ingest]) -> None:
    # Production limits (512 KiB events, 200k-character texts), not the small ones of the module fixture.
    ingest = fresh(STREAMTUNE__STREAMS__MAX_EVENT_BYTES="524288", STREAMTUNE__STREAMS__MAX_TEXT_CHARS="200000")
    ingest.start()
    naive = raw_document("p-1", "naive-time", "A document whose timestamp has no timezone.", tenant="acme")[1]
    naive["occurred_at"] = "2026-11-21T10:00:00"
    ingest.send("poison:naive-time", naive)  # read as UTC, indexed
    # ~1 MB, which its dead letter (value + headers) would not fit under the producer's max.request.size
    ingest.flush()  # what the default producer holds goes out before it is replaced
    ingest.producer = producer(ingest.settings.kafka, **{"message.max.bytes": 1_046_000})
    ingest.send("poison:huge", raw_document("p-2", "huge", "w " * 519_800, tenant="acme")[1])
    ingest.send("poison:title", raw_document("p-3", "long-title", "Short text.", title="T" * 5_000, tenant="acme")[1])
    ingest.send(
        "poison:question", raw_event("p-4", "qa.recorded", {"question": "q" * 50_000, "answer": "a"}, tenant="acme")
    )
    ingest.send("poison:ws-id", raw_document("p-5", "spaced-id ", "An id with a trailing space.", tenant="acme")[1])
    ingest.send("poison:surrogate", b'{"schema_version":1,"event_id":"p-6","type":"qa.recorded",'
                b'"occurred_at":"2026-11-21T10:00:00Z","data":{"question":"\\ud800","answer":"a"}}')  # fmt: skip
    # E-mail bait (quadratic for the old pattern) in a document and in an answer: scrubbed in linear time.
    # (1 MB of bait of every kind is in tests/streams/test_pii.py; here it only has to pass through the job.)
    bait = raw_document("p-7", "email-bait", ("a." * 10_000) + " contact x@example.com", tenant="acme")[1]
    ingest.send("poison:email-bait", bait)
    bait_qa = {"question": "What is the bait?", "answer": ("b." * 9_000) + " write to y@example.com"}
    ingest.send("poison:qa-bait", raw_event("p-9", "qa.recorded", bait_qa, tenant="baited"))
    pii_meta = raw_document("p-8", "pii-meta", "Metadata carries personal data.", tenant="acme")[1]
    pii_meta["data"]["metadata"] = {"owner": "dana.smith@acme.com", "phone": "+44 20 7946 0958", "n": 3}
    ingest.send("poison:pii-meta", pii_meta)
    _good_events(ingest, "after", 0, 20)

    eventually(lambda: ingest.chunks("after") == 20, timeout_s=180, what="good events after the poison")
    eventually(lambda: len(_examples_of(ingest, "after")) >= 20, what="examples after the poison")
    assert len(_examples_of(ingest, "after")) == 20
    # (the bait is thousands of chunks at this test's chunk size: its partition may finish last)
    eventually(lambda: ingest.chunks("acme", "naive-time") == 1, timeout_s=300, what="the naive timestamp's document")
    eventually(lambda: ingest.chunks("acme", "email-bait") >= 1, timeout_s=300, what="the e-mail bait indexed")
    eventually(lambda: ingest.chunks("acme", "pii-meta") == 1, timeout_s=300, what="the metadata document")
    baited = eventually(lambda: _examples_of(ingest, "baited"), timeout_s=300, what="the baited answer's example")
    assert len(baited) == 1
    letters = eventually(lambda: len(ingest.dead_letters()) >= 5 and ingest.dead_letters(), what="dead letters")
    by_key = {(d.key or b"").decode(): d for d in letters}
    assert len(letters) == 5, [d.reason for d in letters]
    assert {k: d.error_class for k, d in by_key.items()} == {
        "poison:huge": "PayloadTooLarge",
        "poison:title": "InvalidEvent",
        "poison:question": "InvalidEvent",
        "poison:ws-id": "InvalidEvent",
        "poison:surrogate": "InvalidEvent",
    }
    huge = by_key["poison:huge"]
    assert huge.original_size is not None and huge.original_size > 1_039_000 and len(huge.value or b"") < 1_000_000
    assert "data.title" in by_key["poison:title"].error_message
    assert "data.question" in by_key["poison:question"].error_message
    assert "whitespace" in by_key["poison:ws-id"].error_message
    stored = ingest.client.collections.get(ingest.settings.weaviate.collection).with_tenant("acme")
    from weaviate.classes.query import Filter

    metadata = stored.query.fetch_objects(filters=Filter.by_property("doc_id").equal("pii-meta")).objects
    assert json.loads(metadata[0].properties["metadata"]) == {"owner": "[EMAIL]", "phone": "[PHONE]", "n": 3}
    states, exceptions = ingest.failures()
    assert states == ["RUNNING"] and exceptions == []  # the job never failed or restarted


@pytest.mark.fault
def test_weaviate_outage_loses_and_duplicates_nothing(
    private_weaviate: Any, fresh: Callable[..., Ingest], tmp_path: Path
) -> None:
    ingest = fresh(**private_weaviate.env)
    ingest.start()
    half = 60
    _good_events(ingest, "outage", 0, half)
    eventually(lambda: ingest.chunks("outage") > 0, what="first documents indexed")
    private_weaviate.stop()
    ingest.client.close()
    _good_events(ingest, "outage", half, half)  # arrives while Weaviate is down
    # The outage itself: 30 s during which the job must wait, not fail (a restart would show in its history).
    outage_end = time.monotonic() + 30
    while time.monotonic() < outage_end:
        states, exceptions = ingest.failures()
        assert states == ["RUNNING"] and exceptions == [], exceptions[0]["stacktrace"][:8000]
        time.sleep(2)
    flink_log = "".join(f.read_text(errors="replace") for f in ingest.settings.flink_log_dir.glob("*.log"))
    assert f"Weaviate at http://127.0.0.1:{ingest.settings.weaviate.http_port} unavailable for" in flink_log
    private_weaviate.start()
    ingest.client = connect(ingest.settings.weaviate)
    ingest.store = ChunkStore(ingest.client, ingest.settings)
    eventually(lambda: ingest.chunks("outage") == 2 * half, timeout_s=240, what="every document after the outage")
    for i in range(2 * half):
        assert ingest.chunks("outage", f"doc-{i:04d}") == 1

    # Examples wait for their context lookups, which the Weaviate client retries on its own (up to a minute).
    # Every QA event ends as an example or a dead letter; wait for all of them to end, then require examples.
    def ended() -> tuple[list[str], list[str]] | None:
        ids = _examples_of(ingest, "outage")
        letters = [d.reason for d in ingest.dead_letters() if (d.key or b"").startswith(b"outage")]
        return (ids, letters) if len(ids) + len(letters) >= 2 * half else None

    try:
        ids, letters = eventually(ended, timeout_s=360, what="every example after the outage")
    except TimeoutError as exc:
        log = "".join(f.read_text(errors="replace") for f in ingest.settings.flink_log_dir.glob("*.log"))
        warnings = [line[:300] for line in log.splitlines() if " WARN " in line or " ERROR " in line][-30:]
        raise AssertionError(
            f"{len(_examples_of(ingest, 'outage'))} of {2 * half} examples after 360 s; the job's last warnings:\n"
            + "\n".join(warnings)
        ) from exc
    assert letters == [], letters
    assert len(ids) == 2 * half and len(set(ids)) == 2 * half  # none lost, none duplicated
    states, exceptions = ingest.failures()
    assert states == ["RUNNING"] and exceptions == []


@pytest.mark.fault
@pytest.mark.parametrize("dependency", ["kafka", "weaviate"])
def test_started_while_a_dependency_is_down_it_waits_then_indexes_every_event(
    dependency: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """Issue 31: `streams run` started while the broker or Weaviate is down logs what it waits for, says so on
    its metrics port, and starts the job once it is back; nothing sent after that is lost or doubled."""
    private = request.getfixturevalue(f"private_{dependency}")  # the test's own, stopped and started here
    fresh = request.getfixturevalue("fresh")  # after it: its deployments are removed while it still runs
    metrics_port = free_port()
    ingest = fresh(
        **private.env,
        STREAMTUNE__FLINK__METRICS_PORT=str(metrics_port),
        STREAMTUNE__KAFKA__REQUEST_TIMEOUT_S="3",  # each start-up attempt's metadata wait
    )
    private.stop()
    waiting = ingest.service(["streams", "run"], b"unavailable for")
    waiting.start(timeout_s=240)
    try:
        said = {
            "kafka": f"streams: Kafka at {ingest.settings.kafka.bootstrap_servers} unavailable for",
            "weaviate": f"Weaviate at http://127.0.0.1:{ingest.settings.weaviate.http_port} unavailable for",
        }
        assert said[dependency] in waiting.output()

        def gauge() -> str:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as response:
                    return str(response.read().decode())
            except OSError:
                return ""

        line = f'streamtune_dependency_waiting{{dependency="{dependency}"}} 1.0'
        eventually(lambda: line in gauge(), 60, f"{dependency} gauge")
        time.sleep(2 * ingest.settings.kafka.retry_max_s)  # a few more backoff rounds: still alive, still waiting
        assert waiting.running(), waiting.output()[-3000:]
        assert "streams: job " not in waiting.output()
        private.start()
        if dependency == "weaviate":  # the test's own client was cut off with it
            ingest.client = connect(ingest.settings.weaviate)
            ingest.store = ChunkStore(ingest.client, ingest.settings)
        eventually(lambda: "streams: job " in waiting.output() or not waiting.running(), 240, "the job to start")
        assert waiting.running(), waiting.output()[-3000:]
        count = 10
        _good_events(ingest, "late", 0, count)
        eventually(lambda: ingest.chunks("late") == count, timeout_s=240, what="every document indexed")
        eventually(lambda: len(_examples_of(ingest, "late")) >= count, timeout_s=240, what="every example")
        for i in range(count):
            assert ingest.chunks("late", f"doc-{i:04d}") == 1
        ids = _examples_of(ingest, "late")
        assert len(ids) == count and len(set(ids)) == count  # none lost, none duplicated
        assert ingest.dead_letters() == []
        assert "Traceback" not in waiting.output()
    finally:
        waiting.stop()


@pytest.mark.fault
@pytest.mark.parametrize("end", ["kill", "stop"])
def test_a_crash_or_stop_while_batches_wait_for_weaviate_loses_and_duplicates_nothing(
    private_weaviate: Any, fresh: Callable[..., Ingest], end: str
) -> None:
    """Batches in flight (handed to the operator's pipeline, results not yet out) are kept in the checkpoint: a
    crash (SIGKILL) or a stop (SIGTERM) while they wait out a Weaviate outage, after checkpoints that hold them,
    loses none of them and dead-letters nothing; a stop ends cleanly (SIGTERM's grace is 60 s, weaviate.give_up_s
    600 s)."""
    ingest = fresh(**private_weaviate.env)
    ingest.start()
    topic = topic_name(DOMAIN_EVENTS, ingest.settings.topics)

    def send(start: int, count: int) -> None:
        # one partition, fewer records than two batches: the operator never blocks, so checkpoints go on
        for i in range(start, start + count):
            key, value = raw_document(f"w-d-{i}", f"doc-{i:04d}", f"Waiting document {i}.", tenant="waiting")
            ingest.producer.produce(topic, key=key.encode(), value=json.dumps(value).encode(), partition=0)
            qa = raw_event(f"w-q-{i}", "qa.recorded", {"question": f"Q{i}?", "answer": f"A{i}."}, tenant="waiting")
            ingest.producer.produce(topic, key=f"w-q-{i}".encode(), value=json.dumps(qa).encode(), partition=0)
        ingest.flush()

    send(0, 4)
    eventually(lambda: len(_examples_of(ingest, "waiting")) == 4, timeout_s=120, what="the first examples")
    private_weaviate.stop()
    ingest.client.close()
    send(4, 4)  # one batch (8 records < batch_size 16), flushed by its timer into a Weaviate that is down

    def log() -> str:
        return "".join(f.read_text(errors="replace") for f in ingest.settings.flink_log_dir.glob("*.log"))

    eventually(lambda: "unavailable for" in log(), what="the batch waiting for Weaviate")
    jobs = ingest.flink("/jobs")["jobs"]
    completed = ingest.flink(f"/jobs/{jobs[0]['id']}/checkpoints")["counts"]["completed"]
    eventually(
        lambda: ingest.flink(f"/jobs/{jobs[0]['id']}/checkpoints")["counts"]["completed"] >= completed + 2,
        what="two checkpoints while the batch waits",
    )
    if end == "kill":
        ingest.kill()
    else:
        ingest.stop()
        assert ingest.job.process is not None and ingest.job.process.returncode == 0  # not killed after the grace
    private_weaviate.start()
    ingest.client = connect(ingest.settings.weaviate)
    ingest.store = ChunkStore(ingest.client, ingest.settings)
    ingest.start()

    def restored() -> int:
        return sum(int(n) for n in re.findall(r"running again a batch of (\d+) records", log()))

    eventually(lambda: restored() == 8, what="the waiting records restored from the checkpoint, in flight")
    eventually(lambda: ingest.chunks("waiting") == 8, timeout_s=180, what="every document after the restart")
    for i in range(8):
        assert ingest.chunks("waiting", f"doc-{i:04d}") == 1
    ids = eventually(
        lambda: (ids := _examples_of(ingest, "waiting")) and len(ids) >= 8 and ids, timeout_s=120, what="examples"
    )
    assert len(ids) == 8 and len(set(ids)) == 8  # none lost, none duplicated
    assert [d for d in ingest.dead_letters() if (d.key or b"").startswith((b"w-", b"waiting:"))] == []
    assert "one by one" not in log()  # no batch was taken for the records' fault


@pytest.mark.fault
def test_a_replay_beside_the_live_job_does_not_fence_it(fresh: Callable[..., Ingest], tmp_path: Path) -> None:
    live = fresh()
    live.start()
    _good_events(live, "replay", 0, 20)
    eventually(lambda: len(_examples_of(live, "replay")) == 20, timeout_s=180, what="live job's first examples")
    replay_port = free_port()
    replay = live.ingest_job(
        STREAMTUNE__STREAMS__GROUP_ID=f"replay-{uuid.uuid4().hex[:8]}",
        STREAMTUNE__FLINK__LOCAL_REST_PORT=str(replay_port),
    )
    replay.start()
    try:
        _good_events(live, "replay", 20, 20)  # both jobs see these
        # Each job writes each example once: the live one 40, the replay (which read from offset 0) 40.
        ids = eventually(
            lambda: (ids := _examples_of(live, "replay")) and len(ids) >= 80 and ids, timeout_s=240, what="examples"
        )
        assert len(ids) == 80 and len(set(ids)) == 40 and all(ids.count(i) == 2 for i in set(ids))
        assert live.chunks("replay") == 40
        for port in (None, replay_port):
            states, exceptions = live.failures(port)
            assert states == ["RUNNING"] and exceptions == [], exceptions  # nobody was fenced
    finally:
        replay.stop()
