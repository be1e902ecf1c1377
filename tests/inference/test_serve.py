"""The query consumer on the real stack, with the tiny model (answer quality is not the subject here)."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from inference.service import ask
from streamtune.contracts import ChatMessage, Query, TrainingExample, encode
from streamtune.harness import ServiceProcess, ingest_job, isolated_env, query_server
from streamtune.kafka import consumer, create_topics, delete_topics, producer
from streamtune.settings import Settings
from streamtune.topics import ANSWERS, DOMAIN_EVENTS, QUERIES, TRAINING_EXAMPLES, topic_name
from training.publish import announce
from training.refresh import refresh
from training.registry import AdapterRegistry

pytestmark = [pytest.mark.integration, pytest.mark.slow]


class Deployment:
    """Uuid-named topics, collection, group and registry, with settings passed to child processes by env."""

    def __init__(self, load: Callable[[Mapping[str, str]], Settings], tiny_model: Path, tmp: Path) -> None:
        self.env = isolated_env(
            tmp,
            "inf",
            STREAMTUNE__INFERENCE__MAX_NEW_TOKENS="8",
            STREAMTUNE__INFERENCE__TORCH_THREADS="1",
            STREAMTUNE__MODELS__BASE_MODEL=str(tiny_model),
            STREAMTUNE__TRAINING__MAX_STEPS="6",
            STREAMTUNE__TRAINING__LEARNING_RATE="0.005",
            STREAMTUNE__TRAINING__EVAL_MAX_NEW_TOKENS="4",
            STREAMTUNE__TRAINING__TORCH_THREADS="1",
        )
        self.tmp = tmp
        self.settings = load(self.env)
        create_topics(self.settings.kafka, self.settings.topics)
        self.producer = producer(self.settings.kafka)

    def server(self) -> ServiceProcess:
        return query_server(self.tmp / "logs", self.env)

    def send(self, spec: Any, key: str, value: bytes) -> None:
        self.producer.produce(topic_name(spec, self.settings.topics), key=key.encode(), value=value)

    def answers(self, wanted: set[str], timeout_s: float = 120) -> dict[str, list[dict[str, Any]]]:
        reader = consumer(self.settings.kafka, uuid.uuid4().hex)
        reader.subscribe([topic_name(ANSWERS, self.settings.topics)])
        found: dict[str, list[dict[str, Any]]] = {}
        deadline = time.monotonic() + timeout_s
        while not wanted <= set(found) and time.monotonic() < deadline:
            message = reader.poll(0.5)
            if message is not None and message.error() is None:
                answer = json.loads(message.value() or b"")
                found.setdefault(answer["query_id"], []).append(answer)
        reader.close()
        return found

    def close(self) -> None:

        from retrieval import connect
        from retrieval.store import ChunkStore

        with connect(self.settings.weaviate) as client:
            ChunkStore(client, self.settings).drop()
        delete_topics(self.settings.kafka, self.settings.topics)


@pytest.fixture
def deployment(
    stack: Settings, env_settings: Callable[[Mapping[str, str]], Settings], tiny_model: Path, tmp_path: Path
) -> Iterator[Deployment]:
    d = Deployment(env_settings, tiny_model, tmp_path)
    yield d
    d.close()


def query(query_id: str, question: str = "What is the refund window?", tenant: str = "acme") -> bytes:
    return encode(Query(query_id=query_id, tenant=tenant, question=question))


def test_events_to_an_answer_citing_the_right_document(deployment: Deployment, stack: Settings) -> None:
    python = stack.flink.python_executable
    assert python is not None, "set STREAMTUNE__FLINK__PYTHON_EXECUTABLE to the Flink environment's python"
    job = ingest_job(deployment.tmp / "logs", deployment.env, python=str(python))
    server = deployment.server()
    job.start()
    try:
        docs = {
            "refund-policy": "Refunds are accepted within 30 days of delivery.",
            "shipping": "Orders ship from Lisbon within two business days.",
            "rentals": "Electric bikes rent for 450 NOK per day.",
        }
        for i, (doc_id, text) in enumerate(docs.items()):
            event = {
                "schema_version": 1,
                "event_id": f"d-{i}",
                "type": "document.upserted",
                "tenant": "acme",
                "occurred_at": "2026-11-21T10:00:00Z",
                "data": {"doc_id": doc_id, "title": doc_id, "text": text},
            }
            deployment.send(DOMAIN_EVENTS, f"acme:{doc_id}", json.dumps(event).encode())
        deployment.producer.flush(15)
        server.start()
        deadline = time.monotonic() + 120
        while True:  # until the job has indexed the shipping document
            answer = ask(deployment.settings, "Where do orders ship from?", "acme", timeout_s=60)
            if (answer.citations and answer.citations[0].doc_id == "shipping") or time.monotonic() > deadline:
                break
            time.sleep(1)
        assert answer.error is None
        assert answer.citations[0].doc_id == "shipping"
        assert answer.citations[0].chunk_id == "shipping#0"
        assert answer.adapter_version is None  # no adapter trained yet: the base model answered
        assert {"embed", "retrieve", "generate", "total"} <= set(answer.timings_ms)
        other = ask(deployment.settings, "Where do orders ship from?", "beta", timeout_s=60)
        assert other.citations == []  # another tenant sees none of acme's chunks
    finally:
        server.stop()
        job.stop()


def _train_one(deployment: Deployment, start: int, lr: float | None = None) -> str:
    for i in range(start, start + 8):
        example = TrainingExample(
            example_id=f"ex-{i}",
            tenant="acme",
            source_event_id=f"e-{i}",
            messages=[
                ChatMessage(role="user", content=f"Refund window? {i}"),
                ChatMessage(role="assistant", content="30 days."),
            ],
        )
        deployment.send(TRAINING_EXAMPLES, example.example_id, encode(example))
    deployment.producer.flush(15)
    outcome = refresh(deployment.settings, "acme", say=lambda _: None)
    assert outcome.version is not None
    return outcome.version


def test_malformed_queries_get_error_answers_and_a_pinned_unknown_adapter_is_an_error(deployment: Deployment) -> None:
    server = deployment.server()
    server.start()
    try:
        deployment.send(QUERIES, "bad-1", b"{not json")
        deployment.send(QUERIES, "bad-2", json.dumps({"schema_version": 1, "query_id": "bad-2"}).encode())
        deployment.send(QUERIES, "pin", encode(Query(query_id="pin", tenant="acme", question="x?", adapter="v0042")))
        deployment.producer.flush(15)
        found = deployment.answers({"bad-1", "bad-2", "pin"})
        assert found["bad-1"][0]["error"]["code"] == "invalid_query"
        assert "question" in found["bad-2"][0]["error"]["message"]
        assert found["pin"][0]["error"]["code"] == "unknown_adapter"
        assert server.running()  # bad input never stops the consumer
    finally:
        server.stop()


def test_hot_swap_while_queries_flow_fails_none(deployment: Deployment) -> None:
    first = _train_one(deployment, 0)
    server = deployment.server()
    server.start()
    sent: list[str] = []
    stop = threading.Event()

    def flow() -> None:
        out = producer(deployment.settings.kafka)
        while not stop.is_set():
            query_id = f"flow-{len(sent)}"
            out.produce(topic_name(QUERIES, deployment.settings.topics), key=query_id.encode(), value=query(query_id))
            out.flush(10)
            sent.append(query_id)
            time.sleep(0.1)

    thread = threading.Thread(target=flow)
    thread.start()
    try:
        time.sleep(3)
        second = _train_one(deployment, 100)  # promoted (or not) and announced while queries flow
        registry = AdapterRegistry(deployment.settings.adapters_dir, "acme")
        if registry.current().name != second:  # type: ignore[union-attr]
            announce(deployment.settings, registry.promote(second))
        time.sleep(6)
    finally:
        stop.set()
        thread.join()
    try:
        found = deployment.answers(set(sent), timeout_s=180)
    finally:
        server.stop()
    assert set(sent) <= set(found), f"unanswered: {sorted(set(sent) - set(found))[:5]}"
    versions = [found[q][0]["adapter_version"] for q in sent]
    assert all(found[q][0]["error"] is None for q in sent)
    assert versions[0] == first and versions[-1] == second
    assert versions == sorted(versions)  # switched once, between requests, never back


def test_a_killed_server_loses_no_query(deployment: Deployment) -> None:
    ids = [f"k-{i}" for i in range(30)]
    for query_id in ids:
        deployment.send(QUERIES, query_id, query(query_id))
    deployment.producer.flush(15)
    server = deployment.server()
    server.start()
    deadline = time.monotonic() + 60
    while not deployment.answers(set(ids[:3]), timeout_s=2).keys() >= set(ids[:3]) and time.monotonic() < deadline:
        time.sleep(0.2)
    server.kill()  # mid-stream, no chance to clean up
    server.start()
    try:
        found = deployment.answers(set(ids), timeout_s=180)
    finally:
        server.stop()
    assert set(ids) <= set(found)  # every query answered at least once (a repeat is harmless)
