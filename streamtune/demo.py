"""`make demo`: the whole loop on a fictional bike shop, on one CPU machine.

Stack up → ingest job → publish the sample domain (documents and vetted QA pairs) → wait until indexed
→ train, gate and promote the first adapter → answer questions through ``queries`` / ``answers`` with
citations and the adapter version → change a fact and show the answer change.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from importlib.resources import files
from typing import Any

from streamtune.errors import ConfigError
from streamtune.kafka import client_config, committed_end_offsets, create_topics
from streamtune.process import ingest_job, query_server
from streamtune.settings import Settings
from streamtune.stack import Stack
from streamtune.topics import DOMAIN_EVENTS, TRAINING_EXAMPLES, topic_name

__all__ = ["main"]

TENANT = "fjordline"
QUESTIONS = (
    "How long do I have to return an unused item?",
    "Where do orders ship from?",
    "How much does a basic tune-up cost?",
)
CHANGED_DOC = "repairs"
CHANGED_TEXT = (
    "Our workshop services any brand. A basic tune-up costs 699 NOK and takes one day. "
    "Flat tyres are fixed while you wait for 150 NOK."
)
CHANGED_QUESTION = "How much does a basic tune-up cost?"


def _sample(name: str) -> list[dict[str, Any]]:
    text = files("streamtune").joinpath("data", name).read_text()
    return [json.loads(line) for line in text.splitlines() if line.strip()]


class _Steps:
    def __init__(self) -> None:
        self.begin = time.monotonic()
        self.number = 0

    def __call__(self, title: str) -> None:
        self.number += 1
        print(f"\n[{self.elapsed():6.1f}s] {self.number}. {title}", flush=True)

    def elapsed(self) -> float:
        return time.monotonic() - self.begin


def _say(line: str) -> None:
    print(f"    {line}", flush=True)


def _event(event_id: str, type_: str, data: dict[str, Any]) -> bytes:
    return json.dumps(
        {
            "schema_version": 1,
            "event_id": event_id,
            "type": type_,
            "tenant": TENANT,
            "occurred_at": datetime.now(UTC).isoformat(),
            "source": "demo",
            "data": data,
        }
    ).encode()


def _wait(check: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"demo: {what} did not happen within {timeout_s:.0f}s")
        time.sleep(0.5)


@contextmanager
def _services(settings: Settings) -> Iterator[tuple[Any, Any]]:
    if settings.flink.python_executable is None:
        raise ConfigError(
            "flink.python_executable",
            None,
            "the demo starts the ingest job with the Flink environment's python: set "
            "STREAMTUNE__FLINK__PYTHON_EXECUTABLE=.venv/flink/bin/python (`make demo` does)",
        )
    logs = settings.cache_dir / "demo" / "logs"
    job = ingest_job(logs, python=str(settings.flink.python_executable))
    server = query_server(logs)
    try:
        yield job, server
    finally:
        server.stop()
        job.stop()


def main(settings: Settings) -> int:
    from confluent_kafka import Producer

    from inference.service import ask
    from retrieval import connect
    from retrieval.store import ChunkStore
    from training.data import read_examples
    from training.refresh import refresh

    # Sized for the 15-minute budget of a 2-core CPU machine; the manifest records them for replay.
    settings = settings.model_copy(
        update={"training": settings.training.model_copy(update={"max_steps": 24, "learning_rate": 3e-4})}
    )
    step = _Steps()
    step("local stack")
    Stack(settings, say=_say).up()
    create_topics(settings.kafka, settings.topics)

    with _services(settings) as (job, server), connect(settings.weaviate) as client:
        step("start the ingest job (PyFlink, local MiniCluster)")
        job.start()
        _say(f"running; log {job.log}")

        documents, qa = _sample("demo_documents.jsonl"), _sample("demo_qa.jsonl")
        step(f"publish the sample domain: {len(documents)} documents, {len(qa)} vetted QA pairs (tenant {TENANT})")
        producer = Producer(client_config(settings.kafka))
        events = topic_name(DOMAIN_EVENTS, settings.topics)
        for doc in documents:
            key = f"{TENANT}:{doc['doc_id']}".encode()
            producer.produce(events, key=key, value=_event(f"demo-doc-{doc['doc_id']}", "document.upserted", doc))
        for i, pair in enumerate(qa):
            producer.produce(events, key=f"demo-qa-{i}".encode(), value=_event(f"demo-qa-{i}", "qa.recorded", pair))
        producer.flush(30)

        step("wait until every document is searchable and the examples are committed")
        store = ChunkStore(client, settings)
        _wait(lambda: all(store.count(TENANT, d["doc_id"]) for d in documents), 300, "indexing")
        _say(f"{store.count(TENANT)} chunks indexed")
        examples_topic = topic_name(TRAINING_EXAMPLES, settings.topics)

        def committed_examples() -> int:
            ends = committed_end_offsets(settings.kafka, examples_topic)
            return len(read_examples(settings, TENANT, {p: (0, e) for p, e in ends.items()}).examples)

        _wait(lambda: committed_examples() >= len(qa), 120, "training examples")
        _say(f"{committed_examples()} training examples on {examples_topic}")

        step("train, evaluate and gate an adapter (QLoRA on SmolLM2-135M-Instruct)")
        outcome = refresh(settings, TENANT, say=_say)
        _say(f"result: {outcome.status} {outcome.version or ''}: {outcome.reason}")
        if outcome.manifest:
            _say(
                f"manifest offsets: {outcome.manifest['data']['ranges']}; adapter sha256 "
                f"{outcome.manifest['adapter']['sha256'][:16]}..."
            )

        step("start the query consumer and ask through the queries topic")
        server.start()
        for question in QUESTIONS:
            _show(question, ask(settings, question, TENANT))

        step(f"change a fact: {CHANGED_DOC} now says the tune-up costs 699 NOK")
        changed_at = time.monotonic()
        producer.produce(
            events,
            key=f"{TENANT}:{CHANGED_DOC}".encode(),
            value=_event(
                f"demo-doc-{CHANGED_DOC}-v2",
                "document.upserted",
                {"doc_id": CHANGED_DOC, "title": "Repair service", "text": CHANGED_TEXT},
            ),
        )
        producer.flush(30)
        vector = _vector(settings, CHANGED_QUESTION)
        _wait(lambda: any("699" in h.text for h in store.search(TENANT, CHANGED_QUESTION, vector, 4)), 120, "update")
        _say(f"searchable {time.monotonic() - changed_at:.1f}s after it was published")
        _show(CHANGED_QUESTION, ask(settings, CHANGED_QUESTION, TENANT))
        _say(f"answered {time.monotonic() - changed_at:.1f}s after the change was published")

    step(f"done in {step.elapsed() / 60:.1f} minutes. The stack keeps running: `make stack-down` stops it.")
    print("    Try: .venv/ml/bin/streamtune adapters list --tenant fjordline", flush=True)
    print("         .venv/ml/bin/streamtune train replay v0001 --tenant fjordline   (same sha256 on CPU)", flush=True)
    return 0


def _vector(settings: Settings, text: str) -> list[float]:
    from streamtune.models import load_embedder

    return [float(x) for x in load_embedder(settings).encode([text], normalize_embeddings=True)[0]]


def _show(question: str, answer: Any) -> None:
    print(f"\n    Q: {question}", flush=True)
    if answer.error is not None:
        print(f"    error {answer.error.code}: {answer.error.message}", flush=True)
        return
    print(f"    A: {answer.answer}", flush=True)
    cited = ", ".join(f"{c.doc_id} ({c.score:.2f})" for c in answer.citations)
    print(f"       cites: {cited}", flush=True)
    print(
        f"       adapter {answer.adapter_version or 'none (base model)'}; "
        f"{answer.timings_ms.get('total', 0) / 1000:.1f}s in serve",
        flush=True,
    )
