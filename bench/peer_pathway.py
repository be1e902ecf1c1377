"""The peer in ``bench/peers.py``: a Pathway pipeline doing what Pathway can of streamtune's ingest.

    .venv/peers/bin/python bench/peer_pathway.py --bootstrap HOST:PORT --topic T --queries Q \
        --model DIR --batch-size 64 --out FILE

Runs in its own environment (``make bench-peers-env``: pathway, sentence-transformers, the same torch);
nothing of streamtune is imported here, so the peer owes nothing to our code. Per document it reads the
event from Kafka (JSON), keeps ``document.upserted``, embeds the text with the same sentence-transformers
model and batch size, and puts the vector into Pathway's own in-memory brute-force KNN index. Queries read
from a second topic are answered from that index, which is how the benchmark checks that what it timed is
searchable. Every embedded document and every answer is written to ``--out`` as one JSON line with the
wall-clock time the engine delivered it.
"""

from __future__ import annotations

import argparse
import json
import time
import uuid
from typing import Any

import pathway as pw
import torch
from pathway.stdlib.indexing.data_index import DataIndex
from pathway.stdlib.indexing.nearest_neighbors import BruteForceKnnFactory
from pathway.xpacks.llm.embedders import SentenceTransformerEmbedder


class Event(pw.Schema):
    event_id: str
    type: str
    tenant: str
    data: pw.Json


class Question(pw.Schema):
    query_id: str
    text: str


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--queries", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2, help="torch threads (the job's embedding.torch_threads)")
    parser.add_argument("--commit-ms", type=int, default=100, help="Pathway's minibatch interval for Kafka input")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    kafka = {
        "bootstrap.servers": args.bootstrap,
        "group.id": f"peer-pathway-{uuid.uuid4().hex[:8]}",
        "auto.offset.reset": "earliest",
        "session.timeout.ms": "6000",
    }
    events = pw.io.kafka.read(
        kafka, args.topic, schema=Event, format="json", autocommit_duration_ms=args.commit_ms, name="events"
    )
    docs = events.filter(pw.this.type == "document.upserted").select(
        doc_id=pw.this.data["doc_id"].as_str(), text=pw.this.data["text"].as_str()
    )
    embedder = SentenceTransformerEmbedder(
        model=args.model, batch_size=args.batch_size, call_kwargs={"normalize_embeddings": True}
    )
    embedded = docs.select(pw.this.doc_id, vector=embedder(pw.this.text))
    index = DataIndex(
        embedded, BruteForceKnnFactory(dimensions=embedder.get_embedding_dimension()).build_inner_index(embedded.vector)
    )
    questions = pw.io.kafka.read(
        {**kafka, "group.id": kafka["group.id"] + "-q"},
        args.queries,
        schema=Question,
        format="json",
        autocommit_duration_ms=args.commit_ms,
        name="questions",
    )
    asked = questions.select(pw.this.query_id, vector=embedder(pw.this.text))
    hits = index.query_as_of_now(asked.vector, number_of_matches=3).select(
        query_id=pw.left.query_id, doc_ids=pw.right.doc_id
    )

    out = open(args.out, "a", buffering=1)  # noqa: SIM115 - the engine's callbacks write until the process ends

    def indexed(key: Any, row: dict[str, Any], time: int, is_addition: bool) -> None:
        if is_addition:
            out.write(json.dumps({"doc_id": row["doc_id"], "t": _now()}) + "\n")

    def answered(key: Any, row: dict[str, Any], time: int, is_addition: bool) -> None:
        if is_addition:
            out.write(json.dumps({"query_id": row["query_id"], "doc_ids": list(row["doc_ids"]), "t": _now()}) + "\n")

    pw.io.subscribe(embedded, indexed)
    pw.io.subscribe(hits, answered)
    pw.run(monitoring_level=pw.MonitoringLevel.NONE)


def _now() -> float:
    return time.time()


if __name__ == "__main__":
    main()
