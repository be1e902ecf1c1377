"""What several benchmarks share: the synthetic documents, how they are produced, the raw-encode yardstick,
the bundled QA pairs as training examples, and the CPUs a run may use. Benchmarks run as scripts
(``python bench/x.py``), so they import this as ``common``."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from typing import Any

from streamtune.contracts import ChatMessage, TrainingExample
from streamtune.harness import raw_event, sample

WORDS = "refund shipping invoice warranty order parcel customer account policy return exchange store".split()  # noqa: SIM905


def document(i: int, words: int = 40) -> str:
    """Synthetic document ``i``: ``words`` shop words and its number (one chunk at the default chunk size)."""
    return " ".join(WORDS[(i * 7 + j * 3) % len(WORDS)] for j in range(words)) + f" document {i}."


def send_document(producer: Any, topic: str, tenant: str, i: int, text: str, partition: int | None = None) -> None:
    """Produce a ``document.upserted`` event for document ``{tenant}-{i}`` (the producer's ``produce`` only;
    to ``partition``, else to its key's). Untitled and without a source, as the benchmarks' figures were measured:
    ``harness.raw_event``, not ``raw_document``, which titles it."""
    doc_id = f"{tenant}-{i}"
    event = raw_event(doc_id, "document.upserted", {"doc_id": doc_id, "text": text}, tenant=tenant)
    where = {} if partition is None else {"partition": partition}
    producer.produce(topic, key=f"{tenant}:{doc_id}".encode(), value=json.dumps(event).encode(), **where)


def raw_encoder(settings: Any, texts: list[str], threads: int | None = None) -> Callable[[], float]:
    """The ingest benchmarks' yardstick: the configured embedding model in this process, on ``threads`` torch
    threads (default ``embedding.torch_threads``, the job's) and with the job's allocator (``memory``), warmed up
    on one batch; each call encodes ``texts`` in batches of ``embedding.batch_size`` and returns documents/s."""
    from streamtune.models import load_embedder, prepare_torch

    prepare_torch(threads or settings.embedding.torch_threads, settings.memory)
    embedder = load_embedder(settings)
    batch = settings.embedding.batch_size
    embedder.encode(texts[:batch], batch_size=batch)

    def rate() -> float:
        begin = time.perf_counter()
        embedder.encode(texts, batch_size=batch, normalize_embeddings=True)
        return len(texts) / (time.perf_counter() - begin)

    return rate


def demo_examples(prefix: str = "bench") -> list[TrainingExample]:
    """The bundled demo QA pairs as training examples, ids ``{prefix}-{i}``."""
    return [
        TrainingExample(
            example_id=f"{prefix}-{i}",
            source_event_id=f"{prefix}-{i}",
            messages=[
                ChatMessage(role="user", content=p["question"]),
                ChatMessage(role="assistant", content=p["answer"]),
            ],
        )
        for i, p in enumerate(sample("demo_qa.jsonl"))
    ]


def cpus() -> int:
    """CPUs this process may run on."""
    return len(os.sched_getaffinity(0))
